package controlplane

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/internal/xdsname"
)

// DefaultID is the path of the SPIFFE ID meshd is expected to present
// unless told otherwise: spiffe://<trust-domain>/meshd. The mesh's xDS
// channel accepts only that ID by default (mesh.WithControlPlaneID).
const DefaultID = "/meshd"

// Source is where meshd gets its X.509-SVID and the trust bundles it
// verifies clients with. The mesh's security sources (Workload API, files,
// dev CA) and go-spiffe's *workloadapi.X509Source implement it. It must
// return the current SVID on every call, so rotation reaches new
// handshakes.
type Source interface {
	x509svid.Source
	x509bundle.Source
}

// MTLSConfig is meshd's identity and who it lets in on Serve and
// ServeHTTP.
type MTLSConfig struct {
	// Source is meshd's X.509-SVID, presented to every client, and the
	// trust bundles client SVIDs are verified against: the Workload API,
	// SVID files or a dev CA (security's sources). Required. It is read on
	// every handshake, so a rotated SVID or bundle applies to the next
	// connection.
	Source Source
	// Operators are the identities that may register and deregister any
	// endpoint and read /debug. Optional; members of meshd's trust domain
	// only.
	Operators []spiffeid.ID
	// MaxConnectionAge ends each xDS connection gracefully after this long
	// (grpc-go adds ±10% jitter) so that clients reconnect with their
	// current SVIDs, and meshd's current one, before the ones the
	// connection was made with expire; clients keep their config meanwhile
	// and the new stream resumes where the old one stopped. Default: 2/5 of
	// what is left of Source's SVID when Serve starts (workloads rotate at
	// half-life).
	MaxConnectionAge time.Duration
	// Grace is how long after the earlier expiry of the two certificates a
	// connection was authenticated with it is cut, at the latest. Default
	// 10s.
	Grace time.Duration
}

// WithMTLS makes Serve and ServeHTTP speak TLS 1.3 only, present cfg's
// SVID and require a client SVID of meshd's own trust domain; the
// registration API and xDS are then authorized by the caller's SPIFFE ID
// (see Handler and Serve). One of WithMTLS and
// WithInsecurePlaintextForLocalDebugging must be given, or Serve and
// ServeHTTP refuse to start with an error saying so; of the two, the last
// one given applies.
func WithMTLS(cfg MTLSConfig) Option {
	return optionFunc(func(o *options) { c := cfg; o.mtls, o.plaintext = &c, false })
}

// WithInsecurePlaintextForLocalDebugging makes Serve and ServeHTTP speak
// plaintext with no authentication: anyone who can reach meshd may read
// every endpoint and policy and register or deregister anything, and
// anyone who can stand in for meshd can push config to every client. It
// exists for local debugging and for tests of other features; never use it
// where another user or host can reach the port.
func WithInsecurePlaintextForLocalDebugging() Option {
	return optionFunc(func(o *options) { o.mtls, o.plaintext = nil, true })
}

// errNoTransport is Serve's refusal when neither transport was chosen.
var errNoTransport = errors.New("controlplane: no transport security chosen: pass controlplane.WithMTLS(controlplane.MTLSConfig{Source: meshdSVID}) (meshd serve -svid-source), or for local debugging only WithInsecurePlaintextForLocalDebugging (meshd serve -insecure-plaintext-xds-for-local-debugging)")

// transport is how Serve's connections are secured, fixed at NewServer.
type transport struct {
	plaintext bool
	mtls      *MTLSConfig
	td        spiffeid.TrustDomain
	operators map[spiffeid.ID]bool
	tls       *tls.Config
}

func newTransport(o *options) (*transport, error) {
	switch {
	case o.plaintext:
		return &transport{plaintext: true}, nil
	case o.mtls == nil:
		return nil, errNoTransport
	case o.mtls.Source == nil:
		return nil, errors.New("controlplane: WithMTLS: MTLSConfig.Source is nil; pass meshd's SVID source (security.NewWorkloadAPISource, NewFileSource or a DevCA source)")
	}
	svid, err := o.mtls.Source.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("controlplane: meshd's SVID: %w", err)
	}
	t := &transport{mtls: o.mtls, td: svid.ID.TrustDomain(), operators: map[spiffeid.ID]bool{}}
	for _, op := range o.mtls.Operators {
		if !op.MemberOf(t.td) {
			return nil, fmt.Errorf("controlplane: operator %s is not in meshd's trust domain %s; operators are workloads of %s", op, t.td, t.td)
		}
		t.operators[op] = true
	}
	if t.mtls.Grace <= 0 {
		t.mtls.Grace = 10 * time.Second
	}
	// go-spiffe verifies the client's chain against the source's bundle and
	// its ID against meshd's trust domain on every full handshake; with
	// session tickets off every handshake is a full one.
	t.tls = tlsconfig.MTLSServerConfig(o.mtls.Source, o.mtls.Source, tlsconfig.AuthorizeMemberOf(t.td))
	t.tls.MinVersion = tls.VersionTLS13
	// grpc-go's clients require h2; the registration API is HTTP/1.1.
	t.tls.NextProtos = []string{"h2", "http/1.1"}
	t.tls.SessionTicketsDisabled = true
	return t, nil
}

// ownExpiry is when meshd's current SVID expires, zero if the source has
// none.
func (t *transport) ownExpiry() time.Time {
	svid, err := t.mtls.Source.GetX509SVID()
	if err != nil || len(svid.Certificates) == 0 {
		return time.Time{}
	}
	return svid.Certificates[0].NotAfter
}

// maxConnectionAge is MTLSConfig.MaxConnectionAge or its default.
func (t *transport) maxConnectionAge() time.Duration {
	if t.mtls.MaxConnectionAge > 0 {
		return t.mtls.MaxConnectionAge
	}
	svid, err := t.mtls.Source.GetX509SVID()
	if err != nil {
		return time.Minute
	}
	// Not NotAfter-NotBefore: issuers backdate NotBefore for clock skew.
	left := time.Until(svid.Certificates[0].NotAfter)
	if left <= 0 {
		return time.Minute
	}
	return left * 2 / 5
}

// handshake runs the TLS handshake on c (bounded by c's read deadline) and
// returns the connection, which closes itself Grace after the earlier
// expiry of the two certificates, and whether the client chose HTTP/2.
func (t *transport) handshake(c net.Conn) (*authedConn, bool, error) {
	// meshd's certificate for this connection is the source's SVID at some
	// moment of the handshake: the earlier expiry of the SVIDs before and
	// after it bounds it (no per-connection copy of the TLS config, which
	// would stay with the connection).
	own := t.ownExpiry()
	tc := tls.Server(c, t.tls)
	if err := tc.Handshake(); err != nil {
		return nil, false, err
	}
	if after := t.ownExpiry(); own.IsZero() || (!after.IsZero() && after.Before(own)) {
		own = after
	}
	cs := tc.ConnectionState()
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0]) // VerifyConnection checked it
	if err != nil {
		return nil, false, err
	}
	expiry := cs.PeerCertificates[0].NotAfter
	if !own.IsZero() && own.Before(expiry) {
		expiry = own
	}
	ac := &authedConn{Conn: tc, id: id, state: cs}
	ac.timer = time.AfterFunc(time.Until(expiry)+t.mtls.Grace, func() { _ = ac.closeConn() })
	return ac, cs.NegotiatedProtocol == "h2", nil
}

// authedConn is a TLS connection with its verified peer ID, cut when its
// certificates have expired (the hard bound behind MaxConnectionAge).
type authedConn struct {
	net.Conn
	id    spiffeid.ID
	state tls.ConnectionState
	timer *time.Timer
	once  sync.Once
}

// closeConn must not touch c.timer: it may fire before it is stored.
func (c *authedConn) closeConn() error {
	err := net.ErrClosed
	c.once.Do(func() { err = c.Conn.Close() })
	return err
}

func (c *authedConn) Close() error {
	c.timer.Stop()
	return c.closeConn()
}

// handshakenCreds are gRPC server credentials for connections the splitter
// has already handshaken: they hand grpc-go the TLS state, so peer.AuthInfo
// is a credentials.TLSInfo like with credentials.NewTLS.
type handshakenCreds struct{}

func (handshakenCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	ac, ok := c.(*authedConn)
	if !ok {
		return nil, nil, fmt.Errorf("controlplane: connection %T was not handshaken by meshd", c)
	}
	return ac, credentials.TLSInfo{State: ac.state, CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
}

func (handshakenCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("controlplane: handshakenCreds are server credentials")
}

func (handshakenCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.3"}
}

func (c handshakenCreds) Clone() credentials.TransportCredentials { return c }

func (handshakenCreds) OverrideServerName(string) error { return nil }

type peerKey struct{}

// connContext is http.Server.ConnContext: it hands the handlers the
// connection's verified ID.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if ac, ok := c.(*authedConn); ok {
		return context.WithValue(ctx, peerKey{}, ac.id)
	}
	return ctx
}

// httpPeer returns the verified SPIFFE ID of the connection r came on.
func httpPeer(r *http.Request) (spiffeid.ID, bool) {
	id, ok := r.Context().Value(peerKey{}).(spiffeid.ID)
	return id, ok
}

// streamPeer returns the verified SPIFFE ID of an xDS stream's connection.
func streamPeer(ctx context.Context) (spiffeid.ID, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, false
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return spiffeid.ID{}, false
	}
	id, err := x509svid.IDFromCert(ti.State.PeerCertificates[0])
	return id, err == nil
}

// streamIdentity returns the verified SPIFFE ID of an xDS stream or fetch
// ("" in plaintext mode), or the gRPC error that refuses it.
func (s *Server) streamIdentity(ctx context.Context) (string, error) {
	if s.tr == nil || s.tr.mtls == nil {
		return "", nil
	}
	id, ok := streamPeer(ctx)
	if !ok {
		// Serve's handshake requires a client SVID; this is a stream
		// that came some other way (a gRPC server of the caller's own).
		return "", status.Error(codes.Unauthenticated, "meshd: the xDS client presented no verified SPIFFE ID; connect with mTLS and the workload's SVID")
	}
	return id.String(), nil
}

// deniedName stands in for the listener names a stream may not see: a
// request with none left must not become a wildcard subscription. No
// service can have this name (service names have no '/').
const deniedName = "gridmesh/denied"

// restrict changes an LDS request, under mTLS, so that the stream of
// identity who gets only what that identity may see: server-side listeners
// (their names carry their server's SPIFFE ID, see ServerListenerName) of
// its own identity, and no wildcard. The names it removes are logged; the
// client's xDS client reports them as not found after its watch timeout.
// Client listeners, routes, clusters and endpoints are served to any
// identity of the trust domain (see doc.go for why).
func (s *Server) restrict(who string, req *discoverypb.DiscoveryRequest) {
	if s.tr == nil || s.tr.mtls == nil || req.GetTypeUrl() != resourcev3.ListenerType {
		return
	}
	names := req.GetResourceNames()
	var denied []string
	kept := names[:0:0]
	for _, n := range names {
		if n == "*" || n == deniedName || (xdsname.IsServerListener(n) && !xdsname.ServerListenerOf(n, who)) {
			denied = append(denied, n)
			continue
		}
		kept = append(kept, n)
	}
	if len(denied) == 0 && len(names) > 0 {
		return
	}
	if len(kept) == 0 {
		kept = append(kept, deniedName)
	}
	req.ResourceNames = kept
	if len(denied) > 0 {
		s.stats.denied.Add(int64(len(denied)))
		s.log.Warn("xDS request for listeners of another identity refused", "identity", who,
			"node", req.GetNode().GetId(), "refused", denied,
			"rule", "a server-side listener is sent only to the identity in its name (grpc/server/<spiffe-id>?...); wildcard listener requests are refused")
	}
}

// newHTTPServer returns the HTTP server of Handler, which reads the
// caller's verified identity from the connection (see Handler).
func (s *Server) newHTTPServer() *http.Server {
	return &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, ConnContext: connContext}
}

// ServeHTTP serves only the HTTP API of Handler on lis, with the same
// transport security as Serve (TLS with client SVIDs under WithMTLS). It
// blocks and returns nil after Close.
func (s *Server) ServeHTTP(lis net.Listener) error {
	if s.trErr != nil {
		lis.Close()
		return s.trErr
	}
	hs := s.newHTTPServer()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		lis.Close()
		return net.ErrClosed
	}
	s.https = append(s.https, hs)
	s.mu.Unlock()
	sp := newSplitter(lis, s.tr)
	sp.grpc.Close() // no gRPC here: HTTP/2 connections are closed
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); sp.run() }()
	err := hs.Serve(sp.http)
	sp.close()
	wg.Wait()
	if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("controlplane: serve HTTP: %w", err)
	}
	return nil
}
