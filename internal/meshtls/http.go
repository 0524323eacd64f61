package meshtls

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/gridmesh/gridmesh/internal/httphost"
	"github.com/gridmesh/gridmesh/security"
)

// HTTPHandler returns next guarded by the mesh's HTTP checks, in order:
//
//  1. The caller's SPIFFE ID is read from the client certificate of the
//     connection; a request without one gets 401. The certificate must have
//     been verified by the TLS layer (ServerTLSConfig and VerifyPeer), which HTTPHandler
//     does not repeat.
//  2. The request target's path is normalized under paths
//     (security.PathPolicy.Normalize); an ambiguous one gets 400 with the reason,
//     and so does a target that is not a path: "OPTIONS *" (have the
//     http.Server set DisableGeneralOptionsHandler, or net/http answers it
//     itself) and CONNECT's "host:port". An absolute-form target
//     ("GET http://host/path") is judged on its path and its host, which
//     net/http puts in Request.Host in place of the Host header.
//  3. The Host (Request.Host) must pass httphost.Check, and name the same host
//     as a Host header next to :authority (HTTP/2) and as the authority of
//     an absolute-form target; else 400.
//  4. authz decides on security.Call{Caller, Method, Path, Host}; a denial
//     gets 403 with the reason, and onDeny (when
//     not nil) is told.
//
// None of these reach next. next sees the normalized path (URL.Path,
// URL.RawPath and RequestURI), the lower-cased Host, and the caller's ID
// in the context (security.PeerID). Nil authz allows every authenticated caller.
// The zero paths is PathStrict, the safe default.
// Once next returns, the route pattern a ServeMux matched is copied to the
// original request's Pattern for the layers outside (metrics, tracing).
func HTTPHandler(next http.Handler, authz security.Authorizer, onDeny func(*security.DeniedError), paths security.PathPolicy) http.Handler {
	if authz == nil {
		authz = AllowAll
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
			var pe *security.PathError
			if errors.As(err, &pe) {
				http.Error(w, "gridmesh: request path refused: "+pe.Reason, http.StatusBadRequest)
			} else {
				http.Error(w, "gridmesh: request path refused", http.StatusBadRequest)
			}
			return
		}
		if err := httphost.Check(r.Host); err != nil {
			http.Error(w, "gridmesh: request refused: "+err.Error(), http.StatusBadRequest)
			return
		}
		host := httphost.Normalize(r.Host)
		// HTTP/2 may carry a Host header beside :authority (net/http
		// removes it on HTTP/1.1); code behind may read either.
		if hh, ok := r.Header["Host"]; ok && (len(hh) != 1 || httphost.Normalize(hh[0]) != host) {
			http.Error(w, "gridmesh: request refused: the Host header and :authority name different hosts", http.StatusBadRequest)
			return
		}
		// An absolute-form target names a host too; on HTTP/1.1 net/http
		// made it Request.Host, on HTTP/2 (":path" "http://host/...")
		// :authority is Request.Host and the two may differ.
		if r.URL.Host != "" && httphost.Normalize(r.URL.Host) != host {
			http.Error(w, "gridmesh: request refused: the request target's authority and the Host name different hosts", http.StatusBadRequest)
			return
		}
		ctx := acceptHTTPPeer(r, caller)
		if err := authz(ctx, security.Call{Caller: caller, Method: r.Method, Path: norm, Host: host, Header: r.Header}); err != nil {
			var denied *security.DeniedError
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

// AllowAll is the Authorizer of a server given none: it allows every
// authenticated caller.
func AllowAll(context.Context, security.Call) error { return nil }

// CheckPathPolicy reports an error when p holds a flag that is none of
// security's PathPolicy constants, naming the ones to combine.
func CheckPathPolicy(p security.PathPolicy) error {
	_, err := p.Normalize("/")
	return err
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
