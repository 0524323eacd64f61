package security

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// HTTPRule is one authorization rule for HTTP calls: callers matching
// Callers whose request matches one of Patterns get Action. Build it with
// AllowHTTP or RefuseHTTP and combine rules with HTTPRules.
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
//	"api.example.org/admin/"    only for that Host (case-insensitive; without a
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
// "/a%20b/../c"). A request with a Host that CheckHost refuses never
// reaches the rules.
type HTTPRule struct {
	// Name identifies the rule in denial messages.
	Name     string
	Action   Action
	Callers  IDMatcher
	Patterns []string // empty: every request
}

// AllowHTTP returns a rule that lets callers make requests matching patterns.
func AllowHTTP(name string, callers IDMatcher, patterns ...string) HTTPRule {
	return HTTPRule{Name: name, Action: ActionAllow, Callers: callers, Patterns: patterns}
}

// RefuseHTTP returns a rule that refuses callers' requests matching patterns,
// whatever any allow rule says.
func RefuseHTTP(name string, callers IDMatcher, patterns ...string) HTTPRule {
	return HTTPRule{Name: name, Action: ActionDeny, Callers: callers, Patterns: patterns}
}

// HTTPRules returns a default-deny Authorizer over HTTP rules, like Rules: a
// call matching a deny rule is refused, else a call matching an allow rule
// proceeds, else it is refused as "default deny". A call with an empty Path
// (a gRPC call) matches no HTTP rule. It returns an error naming every
// invalid pattern. The Authorizer is safe for concurrent use.
func HTTPRules(rules ...HTTPRule) (Authorizer, error) {
	type compiled struct {
		HTTPRule
		patterns []httpPattern
	}
	var all []compiled
	var errs []error
	for _, r := range rules {
		c := compiled{HTTPRule: r}
		for _, p := range r.Patterns {
			hp, err := parseHTTPPattern(p)
			if err != nil {
				errs = append(errs, fmt.Errorf("security: rule %q: %w", r.Name, err))
				continue
			}
			c.patterns = append(c.patterns, hp)
		}
		all = append(all, c)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	matches := func(ctx context.Context, r compiled, call Call) bool {
		if r.Callers == nil || !r.Callers(call.Caller) || call.Path == "" {
			return false
		}
		if len(r.patterns) == 0 {
			return true
		}
		host, _ := HTTPHost(ctx)
		for _, p := range r.patterns {
			if p.match(call.Method, host, call.Path) {
				return true
			}
		}
		return false
	}
	return func(ctx context.Context, call Call) error {
		for _, r := range all {
			if r.Action == ActionDeny && matches(ctx, r, call) {
				return Deny(call, "rule "+r.Name)
			}
		}
		for _, r := range all {
			if r.Action == ActionAllow && matches(ctx, r, call) {
				return nil
			}
		}
		return Deny(call, "default deny")
	}, nil
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

// ValidateHTTPPattern reports whether pattern is a form HTTPRule accepts,
// with an error that says the expected form.
func ValidateHTTPPattern(pattern string) error {
	_, err := parseHTTPPattern(pattern)
	return err
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
		p.host = NormalizeHost(rest[:i])
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
	if p.host != "" && !hostMatches(p.host, host) {
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

type httpHostKey struct{}

// WithHTTPHost returns ctx carrying the normalized Host of the HTTP request
// being authorized, which host patterns of HTTPRules match.
func WithHTTPHost(ctx context.Context, host string) context.Context {
	return context.WithValue(ctx, httpHostKey{}, NormalizeHost(host))
}

// HTTPHost returns the normalized Host set by WithHTTPHost.
func HTTPHost(ctx context.Context) (string, bool) {
	h, ok := ctx.Value(httpHostKey{}).(string)
	return h, ok
}

// HTTPHandler returns next guarded by the mesh's HTTP checks, in order:
//
//  1. The caller's SPIFFE ID is read from the client certificate of the
//     connection; a request without one gets 401. The certificate must have
//     been verified by the TLS layer (ServerTLSConfig), which HTTPHandler
//     does not repeat.
//  2. The request target's path is normalized under paths
//     (PathPolicy.Normalize); an ambiguous one gets 400 with the reason,
//     and so does a target that is not a path: "OPTIONS *" (have the
//     http.Server set DisableGeneralOptionsHandler, or net/http answers it
//     itself) and CONNECT's "host:port". An absolute-form target
//     ("GET http://host/path") is judged on its path and its host, which
//     net/http puts in Request.Host in place of the Host header.
//  3. The Host (Request.Host) must pass CheckHost, and name the same host
//     as a Host header next to :authority (HTTP/2) and as the authority of
//     an absolute-form target; else 400.
//  4. authz decides on Call{Caller, Method, Path} with the request's Host in
//     ctx (HTTPHost); a denial gets 403 with the reason, and onDeny (when
//     not nil) is told.
//
// None of these reach next. next sees the normalized path (URL.Path,
// URL.RawPath and RequestURI), the lower-cased Host, and the caller's ID
// in the context (PeerID). Nil authz allows every authenticated caller.
// The zero paths is PathStrict, the safe default.
// Once next returns, the route pattern a ServeMux matched is copied to the
// original request's Pattern for the layers outside (metrics, tracing).
func HTTPHandler(next http.Handler, authz Authorizer, onDeny func(*DeniedError), paths PathPolicy) http.Handler {
	if authz == nil {
		authz = AllowAll()
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			http.Error(w, "gridmesh: the caller presented no verified client certificate", http.StatusUnauthorized)
			return
		}
		caller, err := x509svid.IDFromCert(r.TLS.PeerCertificates[0])
		if err != nil {
			http.Error(w, "gridmesh: the caller's certificate has no valid SPIFFE ID", http.StatusUnauthorized)
			return
		}
		raw, query := requestPath(r)
		if r.Method == http.MethodConnect && !strings.HasPrefix(raw, "/") {
			http.Error(w, "gridmesh: request refused: authority-form target (CONNECT host:port): only paths are served", http.StatusBadRequest)
			return
		}
		norm, err := paths.Normalize(raw)
		if err != nil {
			var pe *PathError
			if errors.As(err, &pe) {
				http.Error(w, "gridmesh: request path refused: "+pe.Reason, http.StatusBadRequest)
			} else {
				http.Error(w, "gridmesh: request path refused", http.StatusBadRequest)
			}
			return
		}
		if err := CheckHost(r.Host); err != nil {
			http.Error(w, "gridmesh: request refused: "+strings.TrimPrefix(err.Error(), "security: "), http.StatusBadRequest)
			return
		}
		host := NormalizeHost(r.Host)
		// HTTP/2 may carry a Host header beside :authority (net/http
		// removes it on HTTP/1.1); code behind may read either.
		if hh, ok := r.Header["Host"]; ok && (len(hh) != 1 || NormalizeHost(hh[0]) != host) {
			http.Error(w, "gridmesh: request refused: the Host header and :authority name different hosts", http.StatusBadRequest)
			return
		}
		// An absolute-form target names a host too; on HTTP/1.1 net/http
		// made it Request.Host, on HTTP/2 (":path" "http://host/...")
		// :authority is Request.Host and the two may differ.
		if r.URL.Host != "" && NormalizeHost(r.URL.Host) != host {
			http.Error(w, "gridmesh: request refused: the request target's authority and the Host name different hosts", http.StatusBadRequest)
			return
		}
		ctx := WithHTTPHost(acceptHTTPPeer(r, caller), host)
		if err := authz(ctx, Call{Caller: caller, Method: r.Method, Path: norm, Header: r.Header}); err != nil {
			var denied *DeniedError
			if errors.As(err, &denied) && onDeny != nil {
				onDeny(denied)
			}
			http.Error(w, "gridmesh: "+err.Error(), http.StatusForbidden)
			return
		}
		r2 := r.WithContext(ctx)
		u := *r.URL
		u.Opaque = ""
		u.Path, _ = url.PathUnescape(norm) // norm has only valid escapes
		u.RawPath = norm
		r2.URL = &u
		r2.RequestURI = norm
		if query != "" {
			r2.RequestURI += "?" + query
		}
		r2.Host = host
		next.ServeHTTP(w, r2)
		// Hand the ServeMux pattern that matched back to the layers outside
		// (metrics, tracing), which see only the original request.
		if r.Pattern == "" {
			r.Pattern = r2.Pattern
		}
	})
}

// requestPath returns the path of r's request target as it was on the wire,
// and the raw query. For an absolute-form target the scheme and authority
// are dropped; "*" (OPTIONS *) is returned as is and refused later.
func requestPath(r *http.Request) (path, query string) {
	uri := r.RequestURI
	if uri == "" { // not a server request
		uri = r.URL.RequestURI()
	}
	if !strings.HasPrefix(uri, "/") {
		if _, after, ok := strings.Cut(uri, "://"); ok {
			if i := strings.IndexAny(after, "/?#"); i >= 0 {
				uri = after[i:]
			} else {
				uri = "/"
			}
		}
	}
	// A fragment must reach NormalizePath to be refused, so the query is cut
	// only at a "?" before any "#".
	if i := strings.IndexAny(uri, "?#"); i >= 0 && uri[i] == '?' {
		return uri[:i], uri[i+1:]
	}
	return uri, ""
}

// CertificateBoundListener returns lis and cfg (a server TLS config such as
// ServerTLSConfig's) changed so that every connection accepted on the
// returned listener and handshaken with the returned config is closed no
// later than grace after the earlier expiry of the two certificates it was
// authenticated with. It is the HTTP counterpart of ServerCredentials' hard
// bound; servers should also end connections gracefully before that (the
// mesh's HTTP server sends "Connection: close" once a connection is older
// than its maximum age). cfg must not set GetConfigForClient.
func CertificateBoundListener(lis net.Listener, cfg *tls.Config, grace time.Duration) (net.Listener, *tls.Config) {
	base := cfg.Clone()
	out := cfg.Clone()
	out.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		conn, ok := hello.Conn.(*boundConn)
		if !ok {
			return nil, nil // not from our listener: base rules apply
		}
		c := base.Clone()
		var ownExpiry time.Time
		if get := base.GetCertificate; get != nil {
			c.GetCertificate = func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
				cert, err := get(h)
				if err == nil && cert != nil && cert.Leaf != nil {
					ownExpiry = cert.Leaf.NotAfter
				}
				return cert, err
			}
		}
		verify := base.VerifyConnection
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			if verify != nil {
				if err := verify(cs); err != nil {
					return err
				}
			}
			expiry := ownExpiry
			if len(cs.PeerCertificates) > 0 && (expiry.IsZero() || cs.PeerCertificates[0].NotAfter.Before(expiry)) {
				expiry = cs.PeerCertificates[0].NotAfter
			}
			if !expiry.IsZero() {
				conn.closeAfter(time.Until(expiry) + grace)
			}
			return nil
		}
		return c, nil
	}
	return &boundListener{Listener: lis}, out
}

type boundListener struct{ net.Listener }

func (l *boundListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &boundConn{Conn: c}, nil
}

// boundConn is a connection that closes itself once closeAfter's time is
// up.
type boundConn struct {
	net.Conn
	mu     sync.Mutex
	timer  *time.Timer
	closed bool
}

func (c *boundConn) closeAfter(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if c.timer != nil {
		c.timer.Reset(d)
		return
	}
	c.timer = time.AfterFunc(d, func() { c.Close() })
}

func (c *boundConn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return net.ErrClosed
	}
	c.closed = true
	if c.timer != nil {
		c.timer.Stop()
	}
	c.mu.Unlock()
	return c.Conn.Close()
}
