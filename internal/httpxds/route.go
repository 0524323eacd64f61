package httpxds

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/textproto"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	typepb "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/codes"

	"github.com/gridmesh/gridmesh/internal/xdsresource"
)

// Route is one route of the service's route configuration, as the HTTP
// client applies it: a request takes the first route whose match fits its
// URL path and headers (grpc-go's semantics), then goes to one of the
// route's clusters by weight, within the route's timeout. A Route is
// immutable and safe for concurrent use.
type Route struct {
	// Name is the route's name ("" when it has none).
	Name string
	// Clusters are where matching requests go, with their weights (1 for a
	// single cluster). Empty when Unsupported is set.
	Clusters []WeightedCluster
	// Timeout bounds a matching request (max_stream_duration; 0: none).
	Timeout time.Duration
	// Unsupported says why a matching request fails: the route has no
	// action the client can follow (non-forwarding, redirect, direct
	// response, a cluster header). grpc-go fails such calls too.
	Unsupported string
	// Retry is the route's retry policy; nil when it has none.
	Retry *xdsresource.Retry
	// Unapplied describes the route's parts the HTTP client does not apply,
	// "fault: abort 50% with Unavailable"; its match, clusters, timeout
	// and retry policy do apply.
	Unapplied []string
	// Unreachable says an earlier route matches every request.
	Unreachable bool

	path     string // exact path, when set
	prefix   string
	regex    *regexp.Regexp
	fold     bool // case-insensitive path match
	headers  []headerMatcher
	fraction *uint32 // per million
	total    uint64  // sum of the cluster weights
}

// WeightedCluster is one cluster of a route with its weight.
type WeightedCluster struct {
	Name   string
	Weight uint32
}

// Match reports whether a request with this URL path and these headers
// takes the route. Path matching is case-sensitive unless the route says
// otherwise; header names are case-insensitive, several values of one
// header are matched joined with ",", as grpc-go does.
func (r *Route) Match(path string, h http.Header) bool {
	switch {
	case r.regex != nil:
		if !r.regex.MatchString(path) {
			return false
		}
	case r.path != "":
		if r.fold && !strings.EqualFold(path, r.path) || !r.fold && path != r.path {
			return false
		}
	default:
		if r.fold && !strings.HasPrefix(strings.ToLower(path), strings.ToLower(r.prefix)) ||
			!r.fold && !strings.HasPrefix(path, r.prefix) {
			return false
		}
	}
	for _, m := range r.headers {
		if !m.match(h) {
			return false
		}
	}
	if r.fraction != nil && rand.Uint32N(1_000_000) >= *r.fraction {
		return false
	}
	return true
}

// Pick returns the cluster for one request: at random by weight, as
// grpc-go's weighted_target does. It returns "" only when Unsupported is
// set.
func (r *Route) Pick() string {
	switch len(r.Clusters) {
	case 0:
		return ""
	case 1:
		return r.Clusters[0].Name
	}
	n := rand.Uint64N(r.total)
	for _, c := range r.Clusters {
		if n < uint64(c.Weight) {
			return c.Name
		}
		n -= uint64(c.Weight)
	}
	return r.Clusters[len(r.Clusters)-1].Name
}

// Find returns the first route a request with this path and these headers
// takes, nil when none matches.
func Find(routes []*Route, path string, h http.Header) *Route {
	for _, r := range routes {
		if r.Unreachable {
			break
		}
		if r.Match(path, h) {
			return r
		}
	}
	return nil
}

// clusterNames returns the clusters the routes name, sorted.
func clusterNames(routes []*Route) []string {
	set := map[string]bool{}
	for _, r := range routes {
		for _, c := range r.Clusters {
			set[c.Name] = true
		}
	}
	return slices.Sorted(maps.Keys(set))
}

type headerMatcher struct {
	name    string
	invert  bool
	present *bool // present_match
	str     func(string) bool
	rng     *typepb.Int64Range
}

// match follows grpc-go's matcher_header.go: a matcher on a value fails on
// an absent header even when inverted; a present matcher is inverted.
func (m headerMatcher) match(h http.Header) bool {
	vs := headerValues(h, m.name)
	if m.present != nil {
		return (len(vs) > 0) == (*m.present != m.invert)
	}
	if len(vs) == 0 {
		return false
	}
	v := strings.Join(vs, ",")
	if m.rng != nil {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return false
		}
		return (n >= m.rng.GetStart() && n < m.rng.GetEnd()) != m.invert
	}
	return m.str(v) != m.invert
}

// headerValues returns the values of the header name, whatever the case of
// its name in h: net/http canonicalizes names it sets, but a map written
// directly may hold any case.
func headerValues(h http.Header, name string) []string {
	key := textproto.CanonicalMIMEHeaderKey(name)
	vs := h[key]
	for k, v := range h {
		if k != key && strings.EqualFold(k, name) {
			vs = append(slices.Clip(vs), v...)
		}
	}
	return vs
}

// routeTable picks the virtual host for host (the listener name, as
// grpc-go uses the target's authority) and builds its routes.
func routeTable(rc *routepb.RouteConfiguration, host string) ([]*Route, error) {
	vh := bestVirtualHost(rc.GetVirtualHosts(), host)
	if vh == nil {
		return nil, fmt.Errorf("httpxds: route configuration %q: no virtual host matches %q", rc.GetName(), host)
	}
	var out []*Route
	caught := false
	for _, rt := range vh.GetRoutes() {
		r, err := parseRoute(rt)
		if err != nil {
			return nil, fmt.Errorf("httpxds: route configuration %q: %w", rc.GetName(), err)
		}
		if r == nil {
			continue
		}
		r.Unreachable = caught
		caught = caught || xdsresource.CatchAll(rt.GetMatch())
		out = append(out, r)
	}
	return out, nil
}

// bestVirtualHost is grpc-go's FindBestMatchingVirtualHost: an exact
// domain, then the longest suffix wildcard ("*.example.com"), then the
// longest prefix wildcard ("trading.*"), then "*".
func bestVirtualHost(vhs []*routepb.VirtualHost, host string) *routepb.VirtualHost {
	host = strings.ToLower(host)
	var best *routepb.VirtualHost
	bestKind, bestLen := 0, -1 // kind: 4 exact, 3 suffix, 2 prefix, 1 universal
	for _, vh := range vhs {
		for _, d := range vh.GetDomains() {
			d = strings.ToLower(d)
			kind := 0
			switch {
			case d == "*":
				kind = 1
			case strings.HasPrefix(d, "*"):
				if strings.HasSuffix(host, d[1:]) {
					kind = 3
				}
			case strings.HasSuffix(d, "*"):
				if strings.HasPrefix(host, d[:len(d)-1]) {
					kind = 2
				}
			case d == host:
				kind = 4
			}
			if kind == 0 {
				continue
			}
			if kind > bestKind || kind == bestKind && len(d) > bestLen {
				best, bestKind, bestLen = vh, kind, len(d)
			}
		}
	}
	return best
}

// parseRoute returns the route, nil for a route grpc-go ignores (query
// parameter matchers, a path specifier it does not know), or an error for
// one it rejects.
func parseRoute(rt *routepb.Route) (*Route, error) {
	name := rt.GetName()
	m := rt.GetMatch()
	r := &Route{Name: name}
	if cs := m.GetCaseSensitive(); cs != nil && !cs.GetValue() {
		r.fold = true
	}
	switch p := m.GetPathSpecifier().(type) {
	case *routepb.RouteMatch_Prefix:
		r.prefix = p.Prefix
	case *routepb.RouteMatch_Path:
		r.path = p.Path
		if r.path == "" {
			return nil, fmt.Errorf("route %q: empty path", name)
		}
	case *routepb.RouteMatch_SafeRegex:
		pattern := p.SafeRegex.GetRegex()
		if r.fold {
			pattern = "(?i)" + pattern
		}
		re, err := xdsresource.FullRegexp(pattern)
		if err != nil {
			return nil, fmt.Errorf("route %q: path regex %q: %w", name, p.SafeRegex.GetRegex(), err)
		}
		r.regex = re
	default:
		return nil, nil
	}
	if len(m.GetQueryParameters()) > 0 {
		return nil, nil
	}
	for _, h := range m.GetHeaders() {
		hm, err := parseHeaderMatcher(h)
		if err != nil {
			return nil, fmt.Errorf("route %q: %w", name, err)
		}
		r.headers = append(r.headers, hm)
	}
	if f := m.GetRuntimeFraction().GetDefaultValue(); f != nil {
		n := uint64(f.GetNumerator())
		switch f.GetDenominator() {
		case typepb.FractionalPercent_HUNDRED:
			n *= 10000
		case typepb.FractionalPercent_TEN_THOUSAND:
			n *= 100
		}
		v := uint32(min(n, 1_000_000))
		r.fraction = &v
	}

	switch a := rt.GetAction().(type) {
	case *routepb.Route_Route:
		act := a.Route
		switch cs := act.GetClusterSpecifier().(type) {
		case *routepb.RouteAction_Cluster:
			if cs.Cluster == "" {
				return nil, fmt.Errorf("route %q: empty cluster name", name)
			}
			r.Clusters = []WeightedCluster{{Name: cs.Cluster, Weight: 1}}
			r.total = 1
		case *routepb.RouteAction_WeightedClusters:
			for _, c := range cs.WeightedClusters.GetClusters() {
				w := c.GetWeight().GetValue()
				if w == 0 {
					continue
				}
				if c.GetName() == "" {
					return nil, fmt.Errorf("route %q: weighted cluster without a name", name)
				}
				r.Clusters = append(r.Clusters, WeightedCluster{Name: c.GetName(), Weight: w})
				r.total += uint64(w)
			}
			if r.total == 0 || r.total > 1<<32-1 {
				return nil, fmt.Errorf("route %q: weighted clusters total weight %d, want 1 to %d", name, r.total, uint32(1<<32-1))
			}
		default:
			r.Unsupported = fmt.Sprintf("route %q: cluster specifier %T is not supported", name, cs)
		}
		if d := act.GetMaxStreamDuration(); d != nil {
			msd := d.GetGrpcTimeoutHeaderMax()
			if msd == nil {
				msd = d.GetMaxStreamDuration()
			}
			if msd != nil {
				if err := msd.CheckValid(); err != nil || msd.AsDuration() < 0 {
					return nil, fmt.Errorf("route %q: max_stream_duration %v: want a duration of 0 or more", name, msd)
				}
				r.Timeout = msd.AsDuration()
			}
		}
		if p := act.GetRetryPolicy(); p != nil {
			retry, err := xdsresource.ParseRetry(p)
			if err != nil {
				return nil, fmt.Errorf("route %q: %w", name, err)
			}
			r.Retry = &retry
		}
	case *routepb.Route_NonForwardingAction:
		r.Unsupported = fmt.Sprintf("route %q has a non-forwarding action", name)
	default:
		r.Unsupported = fmt.Sprintf("route %q: action %T is not supported", name, a)
	}
	for _, fname := range slices.Sorted(maps.Keys(rt.GetTypedPerFilterConfig())) {
		f := &faultpb.HTTPFault{}
		if rt.GetTypedPerFilterConfig()[fname].UnmarshalTo(f) != nil {
			r.Unapplied = append(r.Unapplied, "filter "+fname)
			continue
		}
		if d := f.GetDelay(); d != nil {
			r.Unapplied = append(r.Unapplied, fmt.Sprintf("fault: delay %s for %s", d.GetFixedDelay().AsDuration(), xdsresource.Percent(d.GetPercentage())))
		}
		if ab := f.GetAbort(); ab != nil {
			what := fmt.Sprintf("gRPC %s", codes.Code(ab.GetGrpcStatus()))
			if s := ab.GetHttpStatus(); s != 0 {
				what = fmt.Sprintf("HTTP %d", s)
			}
			r.Unapplied = append(r.Unapplied, fmt.Sprintf("fault: abort %s with %s", xdsresource.Percent(ab.GetPercentage()), what))
		}
	}
	return r, nil
}

func parseHeaderMatcher(h *routepb.HeaderMatcher) (headerMatcher, error) {
	hm := headerMatcher{name: h.GetName(), invert: h.GetInvertMatch()}
	if hm.name == "" {
		return hm, fmt.Errorf("header matcher without a name")
	}
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case *routepb.HeaderMatcher_ExactMatch:
		hm.str = func(v string) bool { return v == s.ExactMatch }
	case *routepb.HeaderMatcher_PrefixMatch:
		hm.str = func(v string) bool { return strings.HasPrefix(v, s.PrefixMatch) }
	case *routepb.HeaderMatcher_SuffixMatch:
		hm.str = func(v string) bool { return strings.HasSuffix(v, s.SuffixMatch) }
	case *routepb.HeaderMatcher_ContainsMatch:
		hm.str = func(v string) bool { return strings.Contains(v, s.ContainsMatch) }
	case *routepb.HeaderMatcher_SafeRegexMatch:
		re, err := xdsresource.FullRegexp(s.SafeRegexMatch.GetRegex())
		if err != nil {
			return hm, fmt.Errorf("header %q regex %q: %w", hm.name, s.SafeRegexMatch.GetRegex(), err)
		}
		hm.str = re.MatchString
	case *routepb.HeaderMatcher_RangeMatch:
		hm.rng = s.RangeMatch
	case *routepb.HeaderMatcher_PresentMatch:
		p := s.PresentMatch
		hm.present = &p
	case *routepb.HeaderMatcher_StringMatch:
		f, err := xdsresource.StringMatch(s.StringMatch)
		if err != nil {
			return hm, fmt.Errorf("header %q: %w", hm.name, err)
		}
		hm.str = f
	default:
		return hm, fmt.Errorf("header %q: matcher %T is not supported", hm.name, s)
	}
	return hm, nil
}

// Unapplied returns the routes that have parts the HTTP client does not
// apply (Route.Unapplied), leaving out routes no request reaches.
func Unapplied(routes []*Route) []*Route {
	var out []*Route
	for _, r := range routes {
		if !r.Unreachable && len(r.Unapplied) > 0 {
			out = append(out, r)
		}
	}
	return out
}
