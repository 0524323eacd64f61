// Package xdsresource reads the parts of xDS resources that more than one
// of the mesh's xDS readers needs, so they read them one way: the HTTP
// client's own xDS client (internal/httpxds) and the record of what a
// grpc-go xDS client accepted (internal/xdsstatus). Each function follows
// grpc-go's xDS client (google.golang.org/grpc/internal/xds/xdsclient/
// xdsresource), which is what the gRPC side of the mesh applies.
//
//	rds, inline, err := xdsresource.ListenerRoutes(l) // listener -> its routes
//	eds := xdsresource.EDSServiceName(c)               // cluster -> its EDS resource
//	sans, err := xdsresource.ClusterSANs(c)            // cluster -> the peer IDs it accepts
//	ok := xdsresource.MatchAny(sans, "spiffe://example.org/trading")
//
// The functions are pure and safe for concurrent use.
package xdsresource

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlspb "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherpb "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typepb "github.com/envoyproxy/go-control-plane/envoy/type/v3"
)

// The resource types the mesh's xDS clients read.
const (
	ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	RouteType    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	EndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

// ListenerRoutes returns where a client listener's routes are: the name of
// its route configuration (RDS), or the configuration itself when inline.
// It fails when the listener is not an HttpConnectionManager api_listener
// or names no routes, as grpc-go NACKs such a listener.
func ListenerRoutes(l *listenerpb.Listener) (rds string, inline *routepb.RouteConfiguration, err error) {
	name := l.GetName()
	hcm := &hcmpb.HttpConnectionManager{}
	if err := l.GetApiListener().GetApiListener().UnmarshalTo(hcm); err != nil {
		return "", nil, fmt.Errorf("xdsresource: listener %q: api_listener is not an HttpConnectionManager: %w", name, err)
	}
	switch {
	case hcm.GetRds() != nil:
		if hcm.GetRds().GetRouteConfigName() == "" {
			return "", nil, fmt.Errorf("xdsresource: listener %q: rds without a route_config_name", name)
		}
		return hcm.GetRds().GetRouteConfigName(), nil, nil
	case hcm.GetRouteConfig() != nil:
		return "", hcm.GetRouteConfig(), nil
	}
	return "", nil, fmt.Errorf("xdsresource: listener %q: neither rds nor route_config", name)
}

// CatchAll reports whether a route match takes every request: a prefix of
// "" or "/" with no header, query parameter or runtime fraction condition.
// Routes after a catch-all in the same virtual host are unreachable.
func CatchAll(m *routepb.RouteMatch) bool {
	if m.GetPath() != "" || m.GetSafeRegex() != nil {
		return false
	}
	if p := m.GetPrefix(); p != "" && p != "/" {
		return false
	}
	return len(m.GetHeaders()) == 0 && len(m.GetQueryParameters()) == 0 && m.GetRuntimeFraction() == nil
}

// EDSServiceName is the ClusterLoadAssignment name of a cluster's
// endpoints: eds_cluster_config.service_name, else the cluster's name.
func EDSServiceName(c *clusterpb.Cluster) string {
	if n := c.GetEdsClusterConfig().GetServiceName(); n != "" {
		return n
	}
	return c.GetName()
}

// Endpoint returns the address (host:port) and weight of one endpoint of
// an assignment; weight 0 (unset) counts as 1. ok is false for an endpoint
// without a socket address.
func Endpoint(lb *endpointpb.LbEndpoint) (addr string, weight uint32, ok bool) {
	sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
	if sa == nil {
		return "", 0, false
	}
	weight = lb.GetLoadBalancingWeight().GetValue()
	if weight == 0 {
		weight = 1
	}
	return net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))), weight, true
}

// SAN is one subject alternative name matcher of a cluster's upstream TLS
// context, as grpc-go applies it to the server's certificate: exact,
// prefix, suffix, contains or a full-string regex, optionally ignoring
// case. The mesh matches it against the server's SPIFFE ID. SANs compare
// with Equal.
type SAN struct {
	Kind       string // "exact", "prefix", "suffix", "contains" or "regex"
	Pattern    string
	IgnoreCase bool
	re         *regexp.Regexp
}

// Match reports whether the name (a SPIFFE ID) satisfies the matcher.
func (s SAN) Match(name string) bool {
	if s.Kind == "regex" {
		return s.re.MatchString(name)
	}
	p := s.Pattern
	if s.IgnoreCase {
		name, p = strings.ToLower(name), strings.ToLower(p)
	}
	switch s.Kind {
	case "exact":
		return name == p
	case "prefix":
		return strings.HasPrefix(name, p)
	case "suffix":
		return strings.HasSuffix(name, p)
	case "contains":
		return strings.Contains(name, p)
	}
	return false
}

// Equal reports whether two matchers match the same names.
func (s SAN) Equal(o SAN) bool {
	return s.Kind == o.Kind && s.Pattern == o.Pattern && s.IgnoreCase == o.IgnoreCase
}

// String is the pattern itself for an exact matcher
// ("spiffe://example.org/trading"), else "<kind> <pattern>", with
// " (ignore case)" when it ignores case.
func (s SAN) String() string {
	out := s.Pattern
	if s.Kind != "exact" {
		out = s.Kind + " " + out
	}
	if s.IgnoreCase {
		out += " (ignore case)"
	}
	return out
}

// MatchAny reports whether name satisfies any of sans.
func MatchAny(sans []SAN, name string) bool {
	for _, s := range sans {
		if s.Match(name) {
			return true
		}
	}
	return false
}

// ClusterSANs returns the SAN matchers of a cluster's upstream TLS
// context, where grpc-go reads them: the combined validation context's
// default context, else the validation context. None (nil) when the
// cluster has no TLS transport socket or names no SANs: any server the
// trust bundle vouches for is then accepted by grpc-go. An invalid matcher
// is an error, for which grpc-go NACKs the cluster.
func ClusterSANs(c *clusterpb.Cluster) ([]SAN, error) {
	ts := c.GetTransportSocket()
	if ts == nil {
		return nil, nil
	}
	up := &tlspb.UpstreamTlsContext{}
	if err := ts.GetTypedConfig().UnmarshalTo(up); err != nil {
		return nil, fmt.Errorf("xdsresource: cluster %q: transport socket: %w", c.GetName(), err)
	}
	common := up.GetCommonTlsContext()
	matchers := common.GetValidationContext().GetMatchSubjectAltNames()
	if cv := common.GetCombinedValidationContext(); cv != nil {
		matchers = cv.GetDefaultValidationContext().GetMatchSubjectAltNames()
	}
	var sans []SAN
	for _, m := range matchers {
		s, err := newSAN(m)
		if err != nil {
			return nil, fmt.Errorf("xdsresource: cluster %q: SAN matcher %v: %w", c.GetName(), m, err)
		}
		sans = append(sans, s)
	}
	return sans, nil
}

func newSAN(m *matcherpb.StringMatcher) (SAN, error) {
	s := SAN{IgnoreCase: m.GetIgnoreCase()}
	switch p := m.GetMatchPattern().(type) {
	case *matcherpb.StringMatcher_Exact:
		s.Kind, s.Pattern = "exact", p.Exact
	case *matcherpb.StringMatcher_Prefix:
		s.Kind, s.Pattern = "prefix", p.Prefix
	case *matcherpb.StringMatcher_Suffix:
		s.Kind, s.Pattern = "suffix", p.Suffix
	case *matcherpb.StringMatcher_Contains:
		s.Kind, s.Pattern = "contains", p.Contains
	case *matcherpb.StringMatcher_SafeRegex:
		re, err := FullRegexp(p.SafeRegex.GetRegex())
		if err != nil {
			return s, fmt.Errorf("regex %q: %w", p.SafeRegex.GetRegex(), err)
		}
		// grpc-go ignores ignore_case for regexes.
		s.Kind, s.Pattern, s.IgnoreCase, s.re = "regex", p.SafeRegex.GetRegex(), false, re
		return s, nil
	default:
		return s, fmt.Errorf("match pattern %T is not supported", p)
	}
	if s.Pattern == "" && s.Kind != "exact" {
		return s, errors.New("an empty " + s.Kind + " is not allowed")
	}
	return s, nil
}

// StringMatch compiles a StringMatcher (exact, prefix, suffix, contains,
// regex; ignore_case), as grpc-go does for header matchers.
func StringMatch(sm *matcherpb.StringMatcher) (func(string) bool, error) {
	s, err := newSAN(sm)
	if err != nil {
		return nil, err
	}
	return s.Match, nil
}

// FullRegexp compiles a RE2 pattern to match whole strings, as grpc-go
// matches safe_regex.
func FullRegexp(pattern string) (*regexp.Regexp, error) {
	if _, err := regexp.Compile(pattern); err != nil {
		return nil, err
	}
	return regexp.Compile("^(?:" + pattern + ")$")
}

// Retry is a route's retry policy as grpc-go reads it (num_retries 1 by
// default, backoff base 25ms and max ten times the base by default); On
// holds the gRPC status names of retry_on that grpc-go knows.
type Retry struct {
	Attempts  int // num_retries + 1; 1 when retry_on names no code grpc-go knows
	Base, Max time.Duration
	On        string // the known names, comma-separated, in retry_on's order
}

// ParseRetry reads a route's retry policy with grpc-go's rules and its
// errors, so the HTTP client applies what a gRPC client of the same route
// would.
func ParseRetry(p *routepb.RetryPolicy) (Retry, error) {
	var on []string
	for _, s := range strings.Split(p.GetRetryOn(), ",") {
		switch name := strings.TrimSpace(strings.ToLower(s)); name {
		case "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable":
			on = append(on, name)
		}
	}
	r := Retry{Attempts: 2, Base: 25 * time.Millisecond, On: strings.Join(on, ",")}
	if n := p.GetNumRetries(); n != nil {
		if n.GetValue() < 1 {
			return Retry{}, fmt.Errorf("retry_policy.num_retries = %d; must be >= 1", n.GetValue())
		}
		r.Attempts = int(min(n.GetValue(), 1<<16)) + 1
	}
	if b := p.GetRetryBackOff(); b != nil {
		r.Base = b.GetBaseInterval().AsDuration()
		if r.Base <= 0 {
			return Retry{}, fmt.Errorf("retry_policy.base_interval = %v; must be > 0", r.Base)
		}
	}
	r.Max = 10 * r.Base
	if m := p.GetRetryBackOff().GetMaxInterval(); m != nil {
		if r.Max = m.AsDuration(); r.Max <= 0 {
			return Retry{}, fmt.Errorf("retry_policy.max_interval = %v; must be > 0", r.Max)
		}
	}
	if len(on) == 0 {
		r.Attempts = 1
	}
	return r, nil
}

// RetrySummary describes a route's retry policy for people: "retry up to
// 2 times on unavailable,cancelled" (num_retries defaults to 1).
func RetrySummary(p *routepb.RetryPolicy) string {
	n := uint32(1)
	if p.GetNumRetries() != nil {
		n = p.GetNumRetries().GetValue()
	}
	return fmt.Sprintf("retry up to %d times on %s", n, p.GetRetryOn())
}

// Percent describes a fractional percent: "50%", "0.5%" (per ten
// thousand), "0.05%" (per million).
func Percent(f *typepb.FractionalPercent) string {
	switch f.GetDenominator() {
	case typepb.FractionalPercent_TEN_THOUSAND:
		return fmt.Sprintf("%g%%", float64(f.GetNumerator())/100)
	case typepb.FractionalPercent_MILLION:
		return fmt.Sprintf("%g%%", float64(f.GetNumerator())/10000)
	}
	return fmt.Sprintf("%d%%", f.GetNumerator())
}
