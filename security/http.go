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
// A pattern is "[METHOD ][HOST]/PATH", as in net/http.ServeMux:
//
//	"GET /v1/trades"            exact path, method GET (GET also matches HEAD)
//	"/v1/trades/*"              one segment under /v1/trades, any method
//	"/v1/lots/*/holdings"       "*" matches within one segment only ("/v1/*.json" too)
//	"POST /v1/orders/**"        /v1/orders and everything under it, on a segment boundary
//	"api.example.org/admin/**"  only for that Host (case-insensitive; without a
//	                            port it matches every port; "*.example.org" matches subdomains)
//	"*"                         every request
//
// Paths match the normalized request path (NormalizePath), so patterns are
// written in normalized form: no "//", no dot segments, escapes only for
// reserved characters, in upper case ("/a%20b", not "/a%20b/../c").
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

type httpPattern struct {
	method string   // "" any
	host   string   // "" any; normalized; "*.x" suffix match
	any    bool     // "*": every path
	segs   []string // path segments; "" for a trailing slash
	prefix bool     // ended in "/**"
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
	if path == "/**" {
		p.prefix = true
		return p, nil
	}
	if strings.HasSuffix(path, "/**") {
		p.prefix = true
		path = strings.TrimSuffix(path, "/**")
	}
	norm, err := NormalizePath(path)
	if err != nil || norm != path {
		if err == nil {
			err = fmt.Errorf("it normalizes to %q", norm)
		}
		return p, fmt.Errorf("pattern %q: path %q: %w (%w)", s, path, errPathPattern, err)
	}
	if strings.Contains(path, "**") {
		return p, fmt.Errorf("pattern %q: \"**\" may only be the last segment: %w", s, errPathPattern)
	}
	p.segs = strings.Split(path, "/")[1:]
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
	segs := strings.Split(path, "/")[1:]
	if p.prefix {
		if len(p.segs) == 0 { // "/**"
			return true
		}
		if len(segs) < len(p.segs) {
			return false
		}
		segs = segs[:len(p.segs)]
	} else if len(segs) != len(p.segs) {
		return false
	}
	for i, ps := range p.segs {
		// A glob never matches an empty segment (a trailing slash).
		if segs[i] == "" && ps != "" || !globSegment(ps, segs[i]) {
			return false
		}
	}
	return true
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
//  2. The path is normalized (NormalizePath); an ambiguous one gets 400
//     with the reason.
//  3. authz decides on Call{Caller, Method, Path} with the request's Host in
//     ctx (HTTPHost); a denial gets 403 with the reason, and onDeny (when
//     not nil) is told.
//
// None of these reach next. next sees the normalized path (URL.Path,
// URL.RawPath and RequestURI), the lower-cased Host, and the caller's ID
// in the context (PeerID). Nil authz allows every authenticated caller.
// Once next returns, the route pattern a ServeMux matched is copied to the
// original request's Pattern for the layers outside (metrics, tracing).
func HTTPHandler(next http.Handler, authz Authorizer, onDeny func(*DeniedError)) http.Handler {
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
		norm, err := NormalizePath(raw)
		if err != nil {
			var pe *PathError
			if errors.As(err, &pe) {
				http.Error(w, "gridmesh: request path refused: "+pe.Reason, http.StatusBadRequest)
			} else {
				http.Error(w, "gridmesh: request path refused", http.StatusBadRequest)
			}
			return
		}
		host := NormalizeHost(r.Host)
		ctx := WithHTTPHost(WithPeerID(r.Context(), caller), host)
		if err := authz(ctx, Call{Caller: caller, Method: r.Method, Path: norm}); err != nil {
			var denied *DeniedError
			if errors.As(err, &denied) && onDeny != nil {
				onDeny(denied)
			}
			http.Error(w, "gridmesh: "+err.Error(), http.StatusForbidden)
			return
		}
		r2 := r.WithContext(ctx)
		u := *r.URL
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
