package controlplane

import (
	"fmt"
	"math"
	"net"
	"regexp"
	"regexp/syntax"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
)

var (
	nameRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)
	methodRE = regexp.MustCompile(`^/[^/*]+/[^/*]+$`)
	svcRE    = regexp.MustCompile(`^/[^/*]+/\*$`)
	headerRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)
)

var errLongHost = fmt.Errorf("a host is an IP address or a DNS name of at most %d bytes", maxNameLen)

// maxSPIFFEIDLen is the SPIFFE specification's bound on an ID (a URI of
// at most 2048 bytes).
const maxSPIFFEIDLen = 2048

// checkSPIFFEID parses a SPIFFE ID, refusing one over the spec's length.
func checkSPIFFEID(id string) error {
	if len(id) > maxSPIFFEIDLen {
		return fmt.Errorf("%d bytes, over the %d the SPIFFE specification allows", len(id), maxSPIFFEIDLen)
	}
	_, err := spiffeid.FromString(id)
	return err
}

// maxNameLen bounds service and version names, as DNS bounds a name: they
// become xDS resource names and metric labels.
const maxNameLen = 253

// retryCodes are the codes grpc-go's xDS retry policy understands.
var retryCodes = map[string]bool{
	"cancelled": true, "deadline-exceeded": true, "internal": true,
	"resource-exhausted": true, "unavailable": true,
}

type validator struct{ problems []Problem }

func (v *validator) add(field, format string, args ...any) {
	v.problems = append(v.problems, Problem{Field: field, Message: fmt.Sprintf(format, args...)})
}

// validate checks cfg against what meshd and grpc-go accept. It returns
// every problem found, in field order.
func validate(cfg *Config) []Problem {
	v := &validator{}
	names := map[string]int{}
	endpointOwner := map[string]string{}
	for i := range cfg.Services {
		s := &cfg.Services[i]
		f := fmt.Sprintf("services[%d]", i)
		switch {
		case s.Name == "":
			v.add(f+".name", "missing; every service needs a name, the target clients dial as xds:///<name>")
		case len(s.Name) > maxNameLen:
			v.add(f+".name", "%s is too long; names are at most %d bytes", quoteValue(s.Name), maxNameLen)
		case !nameRE.MatchString(s.Name):
			v.add(f+".name", "%s is not allowed; use lower-case letters, digits, '-', '.' and '_', starting with a letter or digit", quoteValue(s.Name))
		default:
			if j, dup := names[s.Name]; dup {
				v.add(f+".name", "%s is already the name of services[%d]; service names must be unique", quoteValue(s.Name), j)
			}
			names[s.Name] = i
		}
		v.service(f, s, cfg.MTLS, endpointOwner)
	}
	return v.problems
}

func (v *validator) service(f string, s *Service, mtls bool, owner map[string]string) {
	if s.Port > 65535 {
		v.add(f+".port", "%d is not a port; use 1-65535", s.Port)
	}
	if s.SPIFFEID != "" {
		if err := checkSPIFFEID(s.SPIFFEID); err != nil {
			v.add(f+".spiffe_id", "%s is not a SPIFFE ID (%v); write spiffe://<trust-domain>/<path>", quoteValue(s.SPIFFEID), err)
		}
	}
	switch s.LB {
	case "", "round_robin", "least_request", "ring_hash":
	default:
		v.add(f+".lb", "%s is not a load-balancing policy; use round_robin, least_request or ring_hash", quoteValue(s.LB))
	}
	if s.HashHeader != "" && s.LB != "ring_hash" {
		v.add(f+".hash_header", "only applies with lb: ring_hash; remove it or set lb: ring_hash")
	}
	if s.HashHeader != "" && !headerRE.MatchString(s.HashHeader) {
		v.add(f+".hash_header", "%s is not a gRPC metadata key; use lower-case letters, digits, '-', '.', '_'", quoteValue(s.HashHeader))
	}
	for j, ep := range s.Endpoints {
		v.endpoint(fmt.Sprintf("%s.endpoints[%d]", f, j), ep, s, owner)
	}
	versions := map[string]bool{}
	for j, ver := range s.Versions {
		vf := fmt.Sprintf("%s.versions[%d]", f, j)
		switch {
		case ver.Name == "":
			v.add(vf+".name", "missing; routes refer to versions by name")
		case len(ver.Name) > maxNameLen:
			v.add(vf+".name", "%s is too long; names are at most %d bytes", quoteValue(ver.Name), maxNameLen)
		case !nameRE.MatchString(ver.Name):
			v.add(vf+".name", "%s is not allowed; use lower-case letters, digits, '-', '.' and '_'", quoteValue(ver.Name))
		case versions[ver.Name]:
			v.add(vf+".name", "%s appears twice; version names must be unique in a service", quoteValue(ver.Name))
		}
		versions[ver.Name] = true
		for k, ep := range ver.Endpoints {
			v.endpoint(fmt.Sprintf("%s.endpoints[%d]", vf, k), ep, s, owner)
		}
	}
	v.timeout(f+".timeout", s.Timeout)
	v.retry(f+".retry", s.Retry)
	catchAll := false
	for j := range s.Routes {
		rf := fmt.Sprintf("%s.routes[%d]", f, j)
		if catchAll {
			v.add(rf, "is never reached: an earlier route matches every call; move it before that route")
		}
		r := &s.Routes[j]
		v.route(rf, r, versions)
		if r.Match.Method == "" && r.Match.Prefix == "" && len(r.Match.Headers) == 0 {
			catchAll = true
		}
	}
	if cb := s.CircuitBreaker; cb != nil && cb.MaxRequests == 0 {
		v.add(f+".circuit_breaker.max_requests", "must be at least 1; remove circuit_breaker for grpc-go's default of 1024")
	}
	if od := s.OutlierDetection; od != nil {
		if od.MaxEjectionPercent > 100 {
			v.add(f+".outlier_detection.max_ejection_percent", "%d is over 100", od.MaxEjectionPercent)
		}
		if od.FailurePercentThreshold > 100 {
			v.add(f+".outlier_detection.failure_percent_threshold", "%d is over 100", od.FailurePercentThreshold)
		}
		if od.Interval != 0 && od.Interval < time.Millisecond {
			v.add(f+".outlier_detection.interval", "%v is too short; write a duration with a unit, like 10s", od.Interval)
		}
	}
	if len(s.Authorization) > 0 && !mtls {
		v.add(f+".authorization", "needs mtls: true at the top of the file: without mTLS no caller has a SPIFFE ID and every call would be denied")
	}
	for j, p := range s.Authorization {
		pf := fmt.Sprintf("%s.authorization[%d]", f, j)
		if len(p.Sources) == 0 {
			v.add(pf+".sources", "missing; list caller SPIFFE IDs (spiffe://td/svc, spiffe://td/ns/*, or \"*\" for any authenticated caller)")
		}
		for k, src := range p.Sources {
			if _, _, err := parseSource(src); err != nil {
				v.add(fmt.Sprintf("%s.sources[%d]", pf, k), "%v", err)
			}
		}
		for k, m := range p.Methods {
			if m != "*" && !methodRE.MatchString(m) && !svcRE.MatchString(m) {
				v.add(fmt.Sprintf("%s.methods[%d]", pf, k), "%s is not a method; use \"/pkg.Service/Method\", \"/pkg.Service/*\" or \"*\"", quoteValue(m))
			}
		}
	}
}

func (v *validator) endpoint(f, ep string, s *Service, owner map[string]string) {
	addr, err := endpointAddress(ep, s.Port)
	if err != nil {
		v.add(f, "%v", err)
		return
	}
	if o, ok := owner[addr]; ok && o != s.Name {
		v.add(f, "%s is already an endpoint of service %s; an address serves one service", cutText(addr), quoteValue(o))
	} else if ok {
		v.add(f, "%s is listed twice in service %s", cutText(addr), quoteValue(s.Name))
	}
	owner[addr] = s.Name
}

// endpointAddress normalizes "host:port", or "host" with a default port.
func endpointAddress(ep string, port uint32) (string, error) {
	host, p, err := net.SplitHostPort(ep)
	if err != nil {
		if port == 0 || strings.Contains(err.Error(), "too many colons") {
			return "", fmt.Errorf("%s is not host:port; write an address like 10.0.0.7:8443, or set the service's port", quoteValue(ep))
		}
		host, p = ep, strconv.Itoa(int(port))
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 || host == "" {
		return "", fmt.Errorf("%s is not host:port with a port in 1-65535", quoteValue(ep))
	}
	if len(host) > maxNameLen {
		return "", fmt.Errorf("%s has a host of %d bytes; %w", quoteValue(ep), len(host), errLongHost)
	}
	return net.JoinHostPort(host, p), nil
}

func (v *validator) timeout(f string, d time.Duration) {
	switch {
	case d < 0:
		v.add(f, "%v is negative", d)
	case d > 0 && d < time.Millisecond:
		v.add(f, "%v is shorter than a millisecond: write a unit, like 2s or 500ms", d)
	}
}

func (v *validator) retry(f string, r *RetryPolicy) {
	if r == nil {
		return
	}
	for i, c := range r.On {
		if !retryCodes[c] {
			v.add(fmt.Sprintf("%s.on[%d]", f, i), "%s is not retriable by grpc-go; use unavailable, cancelled, deadline-exceeded, internal or resource-exhausted", quoteValue(c))
		}
	}
	if r.Attempts > 10 {
		v.add(f+".attempts", "%d is too many; grpc-go caps attempts at 5 and meshd refuses more than 10", r.Attempts)
	}
	v.timeout(f+".base_interval", r.BaseInterval)
	v.timeout(f+".max_interval", r.MaxInterval)
	if r.MaxInterval != 0 && r.MaxInterval < r.BaseInterval {
		v.add(f+".max_interval", "%v is shorter than base_interval %v", r.MaxInterval, r.BaseInterval)
	}
}

func (v *validator) route(f string, r *Route, versions map[string]bool) {
	m := r.Match
	if m.Method != "" && m.Prefix != "" {
		v.add(f+".match", "sets both method and prefix; use one")
	}
	if m.Method != "" && !methodRE.MatchString(m.Method) {
		v.add(f+".match.method", "%s is not a full gRPC method; write /pkg.Service/Method", quoteValue(m.Method))
	}
	if m.Prefix != "" && !strings.HasPrefix(m.Prefix, "/") {
		v.add(f+".match.prefix", "%s must start with '/', like /pkg.Service/", quoteValue(m.Prefix))
	}
	for i, h := range m.Headers {
		hf := fmt.Sprintf("%s.match.headers[%d]", f, i)
		if !headerRE.MatchString(h.Name) {
			v.add(hf+".name", "%s is not a gRPC metadata key; use lower-case letters, digits, '-', '.', '_'", quoteValue(h.Name))
		} else if strings.HasPrefix(h.Name, "grpc-") {
			v.add(hf+".name", "%s: grpc-go ignores matches on grpc- headers; match another key", quoteValue(h.Name))
		}
		n := 0
		for _, set := range []bool{h.Exact != "", h.Prefix != "", h.Regex != "", h.Present} {
			if set {
				n++
			}
		}
		if n != 1 {
			v.add(hf, "set exactly one of exact, prefix, regex, present (found %d)", n)
		}
		if h.Regex != "" {
			if _, err := regexp.Compile(h.Regex); err != nil {
				// The error quotes the expression: quote it cut instead.
				why := err.Error()
				if se, ok := err.(*syntax.Error); ok {
					why = fmt.Sprintf("%s at %s", se.Code, quoteValue(se.Expr))
				}
				v.add(hf+".regex", "%s is not an RE2 regular expression: %s", quoteValue(h.Regex), cutText(why))
			}
		}
	}
	if r.Version != "" && len(r.Split) > 0 {
		v.add(f, "sets both version and split; use version for one target or split for several")
	}
	if r.Version != "" && !versions[r.Version] {
		v.add(f+".version", "%s is not a version of this service; declare it under versions", quoteValue(r.Version))
	}
	// Weights are relative (see WeightedVersion): grpc-go sends a leg
	// weight/total of the calls, skips legs of weight 0, and refuses a
	// route whose total is 0 or over MaxUint32, which would NACK the whole
	// route table of the service.
	var total uint64
	for i, w := range r.Split {
		sf := fmt.Sprintf("%s.split[%d]", f, i)
		if !versions[w.Version] {
			v.add(sf+".version", "%s is not a version of this service; declare it under versions", quoteValue(w.Version))
		}
		total += uint64(w.Weight)
	}
	switch {
	case len(r.Split) > 0 && total == 0:
		v.add(f+".split", "the weights add up to 0, so no call would be routed; give at least one version a weight above 0 (weights are relative: 9 and 1 split calls 90%%/10%%)")
	case total > math.MaxUint32:
		v.add(f+".split", "the weights add up to %d, over grpc-go's limit of 4294967295; use smaller numbers (weights are relative: 9 and 1 split calls like 90 and 10)", total)
	}
	v.timeout(f+".timeout", r.Timeout)
	v.retry(f+".retry", r.Retry)
	if fl := r.Fault; fl != nil {
		if fl.Delay == nil && fl.Abort == nil {
			v.add(f+".fault", "sets neither delay nor abort")
		}
		if d := fl.Delay; d != nil {
			if d.Duration <= 0 {
				v.add(f+".fault.delay.duration", "missing or not positive; write a duration like 100ms")
			}
			v.timeout(f+".fault.delay.duration", d.Duration)
			v.percent(f+".fault.delay.percent", d.Percent)
		}
		if a := fl.Abort; a != nil {
			if _, ok := grpcCode(a.Code); !ok {
				v.add(f+".fault.abort.code", "%s is not a gRPC error code; use a name like UNAVAILABLE or PERMISSION_DENIED", quoteValue(a.Code))
			}
			v.percent(f+".fault.abort.percent", a.Percent)
		}
	}
}

func (v *validator) percent(f string, p float64) {
	if !(p > 0 && p <= 100) { // NaN too
		v.add(f, "%v is not a percentage in (0, 100]", p)
	}
}

// grpcCode parses a gRPC code name other than OK.
func grpcCode(name string) (codes.Code, bool) {
	var c codes.Code
	if err := c.UnmarshalJSON([]byte(strconv.Quote(strings.ToUpper(name)))); err != nil || c == codes.OK {
		return 0, false
	}
	return c, true
}

// parseSource parses an authorization source into an exact ID or a prefix
// ("" and true for any authenticated caller).
func parseSource(src string) (match string, prefix bool, err error) {
	if src == "*" {
		return "", true, nil
	}
	base, wild := strings.CutSuffix(src, "/*")
	if _, err := spiffeid.FromString(base); err != nil {
		if td, err2 := spiffeid.TrustDomainFromString(base); err2 == nil && wild {
			return td.IDString() + "/", true, nil
		}
		return "", false, fmt.Errorf("%s is not a SPIFFE ID (%v); write spiffe://td/path, spiffe://td/path/* or spiffe://td/*", quoteValue(src), err)
	}
	if wild {
		return base + "/", true, nil
	}
	return base, false, nil
}

// checkEndpointWeights refuses endpoints of one service whose weights add up
// to more than grpc-go accepts for one locality (meshd puts a service's
// endpoints in one): grpc-go would NACK the service's endpoints. Weight 0
// counts as the default, 1. Endpoint weights are relative, like split
// weights.
func checkEndpointWeights(service string, eps []Endpoint) error {
	var total uint64
	for _, e := range eps {
		total += uint64(max(e.Weight, 1))
	}
	if total > math.MaxUint32 {
		return fmt.Errorf("controlplane: the endpoints of service %s weigh %d together, over grpc-go's limit of 4294967295; lower the weights (they are relative: 2 and 1 send twice the calls to the first)", quoteValue(service), total)
	}
	return nil
}

// maxQuoted bounds, in bytes, how much of a value quoteValue shows, and
// maxText how much of other text (a library's error message)
// cutText keeps. Errors quote config files and request bodies, which can be
// megabytes: every value an error shows goes through quoteValue or cutText.
const (
	maxQuoted = 48
	maxText   = 160
)

// quoteValue quotes s for an error message as strconv.Quote does, but
// shows at most maxQuoted bytes of its quoted form; a longer value is cut
// on a character boundary and marked with its length:
//
//	"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"… (16777216 bytes, cut)
func quoteValue(s string) string {
	q := strconv.Quote(s)
	if len(q) <= maxQuoted+2 {
		return q
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		piece := strconv.Quote(s[i : i+size])
		piece = piece[1 : len(piece)-1]
		if r == utf8.RuneError && size == 1 {
			piece = fmt.Sprintf(`\x%02x`, s[i])
		}
		if b.Len()-1+len(piece) > maxQuoted {
			break
		}
		b.WriteString(piece)
		i += size
	}
	fmt.Fprintf(&b, "\"… (%d bytes, cut)", len(s))
	return b.String()
}

// showNumber shows a number as written, or quoted and cut when it is
// longer than maxQuoted.
func showNumber(s string) string {
	if len(s) <= maxQuoted {
		return s
	}
	return quoteValue(s)
}

// cutText keeps at most maxText bytes of s (cut on a character boundary),
// marking a cut; for text that is shown unquoted.
func cutText(s string) string {
	if len(s) <= maxText {
		return s
	}
	return fmt.Sprintf("%s… (%d bytes, cut)", runePrefix(s, maxText), len(s))
}

// runePrefix is the longest prefix of s of at most n bytes that does not
// split a UTF-8 character.
func runePrefix(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
