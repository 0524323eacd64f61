package security

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/internal/endpointid"
)

// ServerCredentials returns gRPC transport credentials for a server: mTLS as
// in ServerTLSConfig with any verified SPIFFE ID accepted at the TLS layer
// (callers are authorized per call). A connection is closed no later than
// grace after the earlier expiry of the two certificates it was
// authenticated with; servers should also set a maximum connection age so
// connections normally end gracefully before that.
func ServerCredentials(src Source, grace time.Duration) credentials.TransportCredentials {
	return &serverCreds{TransportCredentials: credentials.NewTLS(ServerTLSConfig(src, spiffeid.MatchAny())), src: src, grace: grace}
}

type serverCreds struct {
	credentials.TransportCredentials
	src   Source
	grace time.Duration
}

func (c *serverCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return nil, nil, err
	}
	expiry := time.Time{}
	if tlsInfo, ok := info.(credentials.TLSInfo); ok && len(tlsInfo.State.PeerCertificates) > 0 {
		expiry = tlsInfo.State.PeerCertificates[0].NotAfter
	}
	if own, err := c.src.GetX509SVID(); err == nil && (expiry.IsZero() || own.Certificates[0].NotAfter.Before(expiry)) {
		expiry = own.Certificates[0].NotAfter
	}
	if expiry.IsZero() {
		return conn, info, nil
	}
	return newExpiringConn(conn, time.Until(expiry)+c.grace), info, nil
}

func (c *serverCreds) Clone() credentials.TransportCredentials {
	return &serverCreds{TransportCredentials: c.TransportCredentials.Clone(), src: c.src, grace: c.grace}
}

// expiringConn closes itself when the certificates it was authenticated
// with have expired (plus grace): the hard bound behind the graceful
// maximum connection age.
type expiringConn struct {
	net.Conn
	timer *time.Timer
	once  sync.Once
}

func newExpiringConn(conn net.Conn, after time.Duration) *expiringConn {
	c := &expiringConn{Conn: conn}
	c.timer = time.AfterFunc(after, func() { c.closeConn() })
	return c
}

// closeConn must not touch c.timer: the timer may fire before
// newExpiringConn has stored it.
func (c *expiringConn) closeConn() error {
	err := net.ErrClosed
	c.once.Do(func() { err = c.Conn.Close() })
	return err
}

func (c *expiringConn) Close() error {
	c.timer.Stop()
	return c.closeConn()
}

// ClientCredentials returns gRPC transport credentials for a client: mTLS as
// in ClientTLSConfig. Each endpoint's expected SPIFFE ID comes from the
// resolver (see discovery) when it has one; otherwise the server's ID must
// satisfy expect.
func ClientCredentials(src Source, expect spiffeid.Matcher) credentials.TransportCredentials {
	base := ClientTLSConfig(src, expect)
	return &clientCreds{TransportCredentials: credentials.NewTLS(base), base: base, src: src}
}

type clientCreds struct {
	credentials.TransportCredentials
	base *tls.Config
	src  Source
}

func (c *clientCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if hi := credentials.ClientHandshakeInfoFromContext(ctx); hi.Attributes != nil {
		if want, ok := endpointid.FromAttributes(hi.Attributes); ok {
			cfg := c.base.Clone()
			cfg.VerifyConnection = VerifyPeer(c.src, spiffeid.MatchID(want))
			return credentials.NewTLS(cfg).ClientHandshake(ctx, authority, raw)
		}
	}
	return c.TransportCredentials.ClientHandshake(ctx, authority, raw)
}

func (c *clientCreds) Clone() credentials.TransportCredentials {
	base := c.base.Clone()
	return &clientCreds{TransportCredentials: credentials.NewTLS(base), base: base, src: c.src}
}

type peerIDKey struct{}

// WithPeerID returns ctx carrying id as the caller's verified SPIFFE ID.
func WithPeerID(ctx context.Context, id spiffeid.ID) context.Context {
	return context.WithValue(ctx, peerIDKey{}, id)
}

// PeerID returns the verified SPIFFE ID of the caller whose request ctx
// belongs to: set by the mesh's HTTP server, or read from the gRPC peer's
// TLS certificate.
func PeerID(ctx context.Context) (spiffeid.ID, bool) {
	if id, ok := ctx.Value(peerIDKey{}).(spiffeid.ID); ok {
		return id, true
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || info.SPIFFEID == nil {
		return spiffeid.ID{}, false
	}
	id, err := spiffeid.FromURI(info.SPIFFEID)
	return id, err == nil
}

// Interceptors returns gRPC server interceptors that authorize every call
// with authz before the handler runs. A denied call gets PERMISSION_DENIED
// with the reason, and onDeny (when not nil) is told. A call without a
// verified SPIFFE ID is UNAUTHENTICATED.
func Interceptors(authz Authorizer, onDeny func(*DeniedError)) (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	check := func(ctx context.Context, method string) error {
		id, ok := PeerID(ctx)
		if !ok {
			return status.Error(codes.Unauthenticated, "gridmesh: the caller presented no verified SPIFFE ID")
		}
		err := authz(ctx, Call{Caller: id, Method: method})
		if err == nil {
			return nil
		}
		var denied *DeniedError
		if errors.As(err, &denied) && onDeny != nil {
			onDeny(denied)
		}
		return status.Error(codes.PermissionDenied, "gridmesh: "+err.Error())
	}
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := check(ctx, info.FullMethod); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := check(ss.Context(), info.FullMethod); err != nil {
			return err
		}
		return handler(srv, ss)
	}
	return unary, stream
}
