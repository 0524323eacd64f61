package meshtls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/internal/endpointid"
	"github.com/gridmesh/gridmesh/internal/peerctx"
	"github.com/gridmesh/gridmesh/security"
)

// ServerCredentials returns gRPC transport credentials for a server: mTLS as
// in ServerTLSConfig with any verified SPIFFE ID accepted at the TLS layer
// (callers are authorized per call). A connection is closed no later than
// grace after the earlier expiry of the two certificates it was
// authenticated with; servers should also set a maximum connection age so
// connections normally end gracefully before that.
func ServerCredentials(src security.Source, grace time.Duration) credentials.TransportCredentials {
	return &serverCreds{TransportCredentials: credentials.NewTLS(ServerTLSConfig(src, spiffeid.MatchAny())), src: src, grace: grace}
}

type serverCreds struct {
	credentials.TransportCredentials
	src   security.Source
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
func ClientCredentials(src security.Source, expect spiffeid.Matcher) credentials.TransportCredentials {
	base := ClientTLSConfig(src, expect)
	return &clientCreds{TransportCredentials: credentials.NewTLS(base), base: base, src: src}
}

type clientCreds struct {
	credentials.TransportCredentials
	base *tls.Config
	src  security.Source
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

// CheckPeerSANs returns creds changed to apply VerifyPeer's SAN checks to
// the peer's leaf certificate after every handshake, client and server
// side, failing the handshake (and closing the connection) when they refuse
// it. It is for credentials that verify certificate chains themselves, such
// as grpc-go's xDS credentials, whose SAN matchers read crypto/x509's
// parsed names (an upper-case "SPIFFE://" scheme, a NUL in a DNS SAN pass
// them); ServerCredentials and ClientCredentials check already. A peer
// without a certificate passes unchanged (the server's interceptors refuse
// it). The result keeps creds' UsesXDS, so grpc-go still applies the
// control plane's security config. Safe for concurrent use.
func CheckPeerSANs(creds credentials.TransportCredentials) credentials.TransportCredentials {
	return &sanCheckedCreds{TransportCredentials: creds}
}

type sanCheckedCreds struct {
	credentials.TransportCredentials
}

func (c *sanCheckedCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, raw)
	return checkHandshake(conn, info, err)
}

func (c *sanCheckedCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	return checkHandshake(conn, info, err)
}

func (c *sanCheckedCreds) Clone() credentials.TransportCredentials {
	return &sanCheckedCreds{TransportCredentials: c.TransportCredentials.Clone()}
}

// UsesXDS reports whether the wrapped credentials take their security
// config from xDS, which grpc-go asks of the credentials it is given.
func (c *sanCheckedCreds) UsesXDS() bool {
	x, ok := c.TransportCredentials.(interface{ UsesXDS() bool })
	return ok && x.UsesXDS()
}

func checkHandshake(conn net.Conn, info credentials.AuthInfo, err error) (net.Conn, credentials.AuthInfo, error) {
	if err != nil {
		return nil, nil, err
	}
	if tlsInfo, ok := info.(credentials.TLSInfo); ok && len(tlsInfo.State.PeerCertificates) > 0 {
		if _, err := idFromCert(tlsInfo.State.PeerCertificates[0]); err != nil {
			conn.Close()
			return nil, nil, fmt.Errorf("meshtls: peer certificate refused: %w", err)
		}
	}
	return conn, info, nil
}

// peerStream is a ServerStream whose context carries the verified peer.
type peerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *peerStream) Context() context.Context { return s.ctx }

// Interceptors returns gRPC server interceptors that authorize every call
// with authz before the handler runs. The caller's SPIFFE ID is read from
// the client certificate of the call's connection (the TLS state gRPC's
// transport records at the handshake) and handed to the handler through
// security.PeerID; a call without a valid one is UNAUTHENTICATED. Incoming
// metadata in which a sidecar would name the caller (x-forwarded-client-cert,
// x-spiffe-id) is dropped: here only the caller can have written it. The
// SAN checks of VerifyPeer apply again, so connections verified by other
// credentials (grpc-go's xDS credentials) are held to them before any
// handler runs. A denied call gets PERMISSION_DENIED
// with the reason, and onDeny (when not nil) is told. Install them first in
// the chain: an interceptor before them sees no security.PeerID. Safe for
// concurrent use.
func Interceptors(authz security.Authorizer, onDeny func(*security.DeniedError)) (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	check := func(ctx context.Context, method string) (context.Context, error) {
		id, err := transportPeerID(ctx)
		if err != nil {
			return nil, status.Error(codes.Unauthenticated, "gridmesh: the caller presented no verified SPIFFE ID: "+err.Error())
		}
		ctx = peerctx.WithVerified(stripIdentityMetadata(ctx), id)
		err = authz(ctx, security.Call{Caller: id, Method: method})
		if err == nil {
			return ctx, nil
		}
		var denied *security.DeniedError
		if errors.As(err, &denied) && onDeny != nil {
			onDeny(denied)
		}
		return nil, status.Error(codes.PermissionDenied, "gridmesh: "+err.Error())
	}
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := check(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := check(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, &peerStream{ServerStream: ss, ctx: ctx})
	}
	return unary, stream
}
