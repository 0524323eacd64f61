package mesh_test

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"

	"github.com/gridmesh/gridmesh/internal/meshtls"
	"github.com/gridmesh/gridmesh/internal/testutil/pki"
	"github.com/gridmesh/gridmesh/mesh"
)

// TestRotationWithoutFailedCalls runs unary calls and short bidirectional
// streams continuously for a minute while both sides' SVIDs (10s lifetime)
// rotate every 5s. No call may fail, new handshakes must use new
// certificates, and no call may be served on a connection whose client
// certificate expired more than the grace period ago.
func TestRotationWithoutFailedCalls(t *testing.T) {
	t.Parallel()
	const (
		ttl      = 10 * time.Second
		duration = time.Minute
		grace    = 2 * time.Second
	)
	ca := newDevCA(t, ttl)
	serverSrc := devSource(t, ca, "/server")
	serverRotations := countRotations(t, serverSrc)
	clientSrc := devSource(t, ca, "/client")
	svc := &echoService{}
	var late atomic.Int64 // calls served past their client certificate's expiry + grace
	checkAge := grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if p, ok := peer.FromContext(ctx); ok {
			if st, ok := tlsState(p); ok && time.Now().After(st.PeerCertificates[0].NotAfter.Add(grace)) {
				late.Add(1)
			}
		}
		return h(ctx, req)
	})
	addr := startServer(t, svc, mesh.WithIdentity(serverSrc), mesh.WithConnectionGrace(grace),
		mesh.WithGRPCServerOptions(checkAge))
	cc, err := mesh.Dial(callTimeout(t), addr, mesh.WithIdentity(clientSrc))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := testgrpc.NewTestServiceClient(cc)

	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	var (
		unaryCalls, streamCalls, failures atomic.Int64
		firstErr                          atomic.Value
		serverCertsMu                     sync.Mutex
		serverCerts                       = map[string]bool{}
	)
	fail := func(err error) {
		failures.Add(1)
		firstErr.CompareAndSwap(nil, err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // unary calls
		defer wg.Done()
		for ctx.Err() == nil {
			var p peer.Peer
			callCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := client.UnaryCall(callCtx, &testpb.SimpleRequest{}, grpc.Peer(&p))
			cancel()
			unaryCalls.Add(1)
			if err != nil {
				fail(err)
				continue
			}
			if st, ok := tlsState(&p); ok {
				serverCertsMu.Lock()
				serverCerts[st.PeerCertificates[0].SerialNumber.String()] = true
				serverCertsMu.Unlock()
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	go func() { // streams of ten round trips each
		defer wg.Done()
		for ctx.Err() == nil {
			streamCalls.Add(1)
			if err := tenRoundTrips(client); err != nil {
				fail(err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	wg.Wait()

	clientCerts := svc.clientCerts()
	t.Logf("%d unary calls, %d streams, %d failed; %d client and %d server certificates used; %d server rotations",
		unaryCalls.Load(), streamCalls.Load(), failures.Load(), len(clientCerts), len(serverCerts), serverRotations())
	if n := failures.Load(); n != 0 {
		t.Errorf("%d calls failed, want 0; first: %v", n, firstErr.Load())
	}
	// 60s with rotation every 5s: expect about a dozen; demand several.
	if len(clientCerts) < 5 || len(serverCerts) < 5 {
		t.Errorf("new handshakes did not pick up rotated certificates: %d client, %d server certificates seen", len(clientCerts), len(serverCerts))
	}
	// Rotation at half-life: about duration/(ttl/2) = 12 rotations.
	if n := serverRotations(); n > 2*int64(duration/(ttl/2)) {
		t.Errorf("%d rotations in %v with a %v SVID: rotating far more often than at half-life", n, duration, ttl)
	}
	if n := late.Load(); n != 0 {
		t.Errorf("%d calls served on connections whose client certificate had expired more than %v ago", n, grace)
	}
}

func tenRoundTrips(client testgrpc.TestServiceClient) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := client.FullDuplexCall(ctx)
	if err != nil {
		return err
	}
	for i := 0; i < 10; i++ {
		if err := stream.Send(&testpb.StreamingOutputCallRequest{}); err != nil {
			return err
		}
		if _, err := stream.Recv(); err != nil {
			return err
		}
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	if _, err := stream.Recv(); err != io.EOF {
		return err
	}
	return nil
}

// TestConnectionEndsWhenPeerCertificateExpires: a client whose certificate
// expires long before the server's own keeps no connection past that expiry
// plus the grace period, even with a stream open.
func TestConnectionEndsWhenPeerCertificateExpires(t *testing.T) {
	t.Parallel()
	const grace = time.Second
	ca := pki.NewCA(t, "example.org")
	svc := &echoService{}
	addr := startServer(t, svc, mesh.WithIdentity(ca.NewSource(t, "spiffe://example.org/server")),
		mesh.WithConnectionGrace(grace))
	clientCert := ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/client"}, NotAfter: time.Now().Add(3 * time.Second)})
	clientSrc := &pki.Source{
		SVID:    &x509svid.SVID{ID: id("/client"), Certificates: []*x509.Certificate{clientCert.Leaf}, PrivateKey: clientCert.PrivateKey.(crypto.Signer)},
		Bundles: x509bundle.NewSet(ca.Bundle()),
	}
	client := dial(t, addr, mesh.WithIdentity(clientSrc))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&testpb.StreamingOutputCallRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("first round trip: %v", err)
	}
	_, err = stream.Recv() // blocks until the server cuts the connection
	cut := time.Now()
	if err == nil || errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		t.Fatalf("stream outlived the client certificate: err = %v", err)
	}
	if expiry := clientCert.Leaf.NotAfter; cut.Before(expiry) || cut.After(expiry.Add(grace+2*time.Second)) {
		t.Errorf("connection cut at %v, want between expiry %v and expiry+grace", cut.Sub(expiry), expiry)
	}
	// A new handshake with the expired certificate is refused.
	short, cancel2 := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel2()
	if _, err := client.UnaryCall(short, &testpb.SimpleRequest{}); err == nil {
		t.Error("call with an expired client certificate succeeded")
	}
}

// switchableSource lets a test change a server's trust bundles mid-test.
type switchableSource struct {
	svid    *x509svid.SVID
	bundles atomic.Pointer[x509bundle.Set]
}

func (s *switchableSource) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }
func (s *switchableSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.bundles.Load().GetX509BundleForTrustDomain(td)
}
func (s *switchableSource) Close() error { return nil }

// TestResumedSessionIsVerifiedAgain: a TLS 1.3 session resumed from a ticket
// is checked against the current trust bundle, like a full handshake. After
// the client's CA leaves the server's bundle, resumption is refused.
func TestResumedSessionIsVerifiedAgain(t *testing.T) {
	ca := pki.NewCA(t, "example.org")
	serverSrc := &switchableSource{svid: ca.SVID(t, "spiffe://example.org/server")}
	serverSrc.bundles.Store(x509bundle.NewSet(ca.Bundle()))
	clientSrc := ca.NewSource(t, "spiffe://example.org/client")

	lis, err := tls.Listen("tcp", "127.0.0.1:0", meshtls.ServerTLSConfig(serverSrc, spiffeid.MatchAny()))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer lis.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(5 * time.Second))
				if conn.(*tls.Conn).Handshake() == nil {
					conn.Write([]byte{1})
				}
			}()
		}
	}()

	cfg := meshtls.ClientTLSConfig(clientSrc, spiffeid.MatchID(id("/server")))
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	connect := func() (resumed bool, err error) {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", lis.Addr().String(), cfg)
		if err != nil {
			return false, err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		// Reading makes the client process the session ticket and, in
		// TLS 1.3, learn whether the server accepted its certificate.
		if _, err := conn.Read(make([]byte, 1)); err != nil {
			return false, err
		}
		return conn.ConnectionState().DidResume, nil
	}
	if _, err := connect(); err != nil {
		t.Fatalf("first connection: %v", err)
	}
	resumed, err := connect()
	if err != nil || !resumed {
		t.Fatalf("second connection: resumed=%v err=%v; the test needs resumption to work", resumed, err)
	}
	// The client's CA is no longer trusted: a resumed session must fail too.
	serverSrc.bundles.Store(x509bundle.NewSet(pki.NewCA(t, "example.org").Bundle()))
	if resumed, err := connect(); err == nil {
		t.Fatalf("connection after the bundle change succeeded (resumed=%v); want refused", resumed)
	}
}
