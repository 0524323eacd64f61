package security

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/gridmesh/gridmesh/internal/httphost"
)

// HTTPRules returns a default-deny Authorizer over HTTP rules, like Rules:
// a call matching a Refuse rule is refused, else a call matching an Allow
// rule proceeds, else it is refused as "default deny". A call with an
// empty Path (a gRPC call) matches no HTTP rule. Rules are validated as
// Rules validates them, and each pattern must be one of the forms below;
// the error names each bad rule (by index and name), field and pattern and
// the form expected. The Authorizer is safe for concurrent use.
//
// A pattern is "[METHOD ][HOST]/PATH". Its path works as in
// net/http.ServeMux, with "*" and "**" in place of ServeMux's wildcards:
//
//	"GET /v1/trades"            exactly /v1/trades, method GET (GET also matches HEAD)
//	"/v1/trades/"               the subtree: /v1/trades/ and every path under it, not /v1/trades
//	"/v1/trades/{$}"            exactly /v1/trades/ (trailing slash), nothing under it
//	"/v1/trades/*"              one segment under /v1/trades: /v1/trades/42, not /v1/trades/ or /v1/trades/42/x
//	"/v1/lots/*/holdings"       "*" matches within one non-empty segment ("/v1/*.json" too)
//	"POST /v1/orders/**"        /v1/orders itself and its subtree, on a segment boundary (not /v1/ordersX)
//	"/" and "/**"               every path
//	"/{$}"                      only "/"
//	"api.example.org/admin/"    only for that Host (Call.Host; case-insensitive; without a
//	                            port it matches every port; "*.example.org" matches subdomains)
//	"*"                         every request
//
// How pattern paths match request paths:
//
//	pattern          /public  /public/  /public/a  /public/a/b  /publicX
//	/public          yes      no        no         no           no
//	/public/         no       yes       yes        yes          no
//	/public/{$}      no       yes       no         no           no
//	/public/*        no       no        yes        no           no
//	/public/*/       no       no        no         yes          no
//	/public/**       yes      yes       yes        yes          no
//
// Paths match the normalized request path (PathPolicy.Normalize), so
// patterns are written in normalized form: no "//", no dot segments,
// escapes only for reserved characters, in upper case ("/a%20b", not
// "/a%20b/../c"). The mesh's HTTP server refuses a request whose Host is
// malformed before it reaches the rules.
func HTTPRules(rules ...Rule) (Authorizer, error) {
	compiled, err := compile("HTTPRules", rules, func(s string) (matchFunc, error) {
		p, err := parseHTTPPattern(s)
		if err != nil {
			return nil, err
		}
		return func(c Call) bool { return c.Path != "" && p.match(c.Method, c.Host, c.Path) }, nil
	})
	if err != nil {
		return nil, err
	}
	for i := range compiled {
		if len(compiled[i].matchers) == 0 {
			// Every HTTP request, and still no gRPC call.
			compiled[i].matchers = []matchFunc{func(c Call) bool { return c.Path != "" }}
		}
	}
	return decide(compiled), nil
}

// pathKind says what a pattern's path matches after its segments.
type pathKind uint8

const (
	pathExact      pathKind = iota // "/a/b": nothing more
	pathExactSlash                 // "/a/b/{$}": exactly one trailing slash
	pathSubtree                    // "/a/b/": a slash and anything
	pathTree                       // "/a/b/**": nothing, or a slash and anything
)

type httpPattern struct {
	method string   // "" any
	host   string   // "" any; normalized; "*.x" suffix match
	any    bool     // "*": every request
	segs   []string // path segments before the kind's suffix
	kind   pathKind
}

func parseHTTPPattern(s string) (httpPattern, error) {
	var p httpPattern
	rest := s
	if m, r, ok := strings.Cut(s, " "); ok {
		if m == "" || strings.ToUpper(m) != m || strings.ContainsAny(m, "/*") {
			return p, fmt.Errorf("pattern %q: method %q: want an upper-case HTTP method such as GET", s, m)
		}
		p.method, rest = m, strings.TrimLeft(r, " ")
	}
	if rest == "*" {
		p.any = true
		return p, nil
	}
	i := strings.IndexByte(rest, '/')
	if i < 0 {
		return p, fmt.Errorf("pattern %q: no path: %w", s, errPathPattern)
	}
	if i > 0 {
		p.host = httphost.Normalize(rest[:i])
		if strings.Contains(p.host[1:], "*") || (strings.HasPrefix(p.host, "*") && !strings.HasPrefix(p.host, "*.")) {
			return p, fmt.Errorf("pattern %q: host %q: want a host name, optionally starting with \"*.\"", s, rest[:i])
		}
	}
	path := rest[i:]
	base := path
	switch {
	case strings.HasSuffix(path, "/**"):
		p.kind, base = pathTree, strings.TrimSuffix(path, "/**")
	case strings.HasSuffix(path, "/{$}"):
		p.kind, base = pathExactSlash, strings.TrimSuffix(path, "/{$}")
	case strings.HasSuffix(path, "/"):
		p.kind, base = pathSubtree, strings.TrimSuffix(path, "/")
	}
	if base == "" {
		return p, nil
	}
	// Patterns may hold what any policy lets through (";", "%25", ...); a
	// path the server's policy refuses never reaches them.
	norm, err := pathPolicyAll.Normalize(base)
	if err != nil || norm != base || strings.HasSuffix(base, "/") {
		if err == nil {
			err = fmt.Errorf("it normalizes to %q", norm)
		}
		return p, fmt.Errorf("pattern %q: path %q: %w (%w)", s, path, errPathPattern, err)
	}
	if strings.Contains(base, "**") {
		return p, fmt.Errorf("pattern %q: \"**\" may only be the last segment: %w", s, errPathPattern)
	}
	p.segs = strings.Split(base, "/")[1:]
	return p, nil
}

func (p httpPattern) match(method, host, path string) bool {
	if p.method != "" && p.method != method && !(p.method == http.MethodGet && method == http.MethodHead) {
		return false
	}
	if p.host != "" && !hostMatches(p.host, httphost.Normalize(host)) {
		return false
	}
	if p.any {
		return true
	}
	// pos is the index of the "/" before the next segment of path.
	pos := 0
	for _, ps := range p.segs {
		if pos >= len(path) || path[pos] != '/' {
			return false
		}
		end := strings.IndexByte(path[pos+1:], '/')
		if end < 0 {
			end = len(path)
		} else {
			end += pos + 1
		}
		seg := path[pos+1 : end]
		// A glob never matches an empty segment (a trailing slash).
		if seg == "" || !globSegment(ps, seg) {
			return false
		}
		pos = end
	}
	rest := path[pos:]
	switch p.kind {
	case pathExact:
		return rest == ""
	case pathExactSlash:
		return rest == "/"
	case pathSubtree:
		return strings.HasPrefix(rest, "/")
	default: // pathTree
		return rest == "" || rest[0] == '/'
	}
}

func hostMatches(pattern, host string) bool {
	name, port := host, ""
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.Contains(host[i:], "]") {
		name, port = host[:i], host[i:]
	}
	pname, pport := pattern, ""
	if i := strings.LastIndexByte(pattern, ':'); i >= 0 && !strings.Contains(pattern[i:], "]") {
		pname, pport = pattern[:i], pattern[i:]
	}
	if pport != "" && pport != port {
		return false
	}
	if suffix, ok := strings.CutPrefix(pname, "*"); ok {
		return strings.HasSuffix(name, suffix) && len(name) > len(suffix)
	}
	return pname == name
}

// globSegment matches one path segment against a pattern segment in which
// "*" stands for any run of characters.
func globSegment(pattern, s string) bool {
	star := strings.IndexByte(pattern, '*')
	if star < 0 {
		return pattern == s
	}
	if !strings.HasPrefix(s, pattern[:star]) {
		return false
	}
	rest := pattern[star+1:]
	s = s[star:]
	for i := 0; i <= len(s); i++ {
		if globSegment(rest, s[i:]) {
			return true
		}
	}
	return false
}
