package mesh_test

import (
	"context"
	"crypto/x509"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"

	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var td = spiffeid.RequireTrustDomainFromString("example.org")

func id(path string) spiffeid.ID { return spiffeid.RequireFromPath(td, path) }

// echoService answers UnaryCall with the caller's SPIFFE ID in Username and
// echoes FullDuplexCall messages. It counts every handler run and records
// the client certificates it was reached with.
type echoService struct {
	testgrpc.UnimplementedTestServiceServer
	calls atomic.Int64
	// block, when set, makes UnaryCall wait until it is closed.
	block chan struct{}

	mu    sync.Mutex
	certs map[string]*x509.Certificate // client leaf by serial
}

func (s *echoService) record(ctx context.Context) {
	s.calls.Add(1)
	p, ok := peer.FromContext(ctx)
	if !ok {
		return
	}
	if st, ok := tlsState(p); ok && len(st.PeerCertificates) > 0 {
		leaf := st.PeerCertificates[0]
		s.mu.Lock()
		if s.certs == nil {
			s.certs = map[string]*x509.Certificate{}
		}
		s.certs[leaf.SerialNumber.String()] = leaf
		s.mu.Unlock()
	}
}

func (s *echoService) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.record(ctx)
	if s.block != nil {
		<-s.block
	}
	caller, _ := mesh.PeerID(ctx)
	return &testpb.SimpleResponse{Username: caller.String(), Payload: req.GetPayload()}, nil
}

func (s *echoService) FullDuplexCall(stream testgrpc.TestService_FullDuplexCallServer) error {
	s.record(stream.Context())
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
}

func (s *echoService) clientCerts() map[string]*x509.Certificate {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]*x509.Certificate{}
	for k, v := range s.certs {
		out[k] = v
	}
	return out
}

// startServer runs a mesh server with an echoService on loopback until the
// test ends.
func startServer(t *testing.T, svc testgrpc.TestServiceServer, opts ...mesh.ServerOption) string {
	t.Helper()
	srv, err := mesh.NewServer(opts...)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	testgrpc.RegisterTestServiceServer(srv, svc)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		srv.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return lis.Addr().String()
}

func dial(t *testing.T, addr string, opts ...mesh.DialOption) testgrpc.TestServiceClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, err := mesh.Dial(ctx, addr, opts...)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { cc.Close() })
	return testgrpc.NewTestServiceClient(cc)
}

func devSource(t testing.TB, ca *security.DevCA, path string) *security.DevSource {
	t.Helper()
	src, err := ca.Source(id(path))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

func newDevCA(t testing.TB, ttl time.Duration) *security.DevCA {
	t.Helper()
	ca, err := security.NewDevCA(td, security.DevCAConfig{SVIDTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func callTimeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return lis
}

// freeAddr returns a loopback address no one listens on now, for an admin
// endpoint of the test's own: with the shared "127.0.0.1:0" a test could
// find the previous test's endpoint still held by a connection whose
// release runs after its Close returns.
func freeAddr(t *testing.T) string {
	t.Helper()
	lis := listen(t)
	defer lis.Close()
	return lis.Addr().String()
}

// newAdmin starts an admin endpoint of the test's own on a free loopback
// port, closed when the test ends.
func newAdmin(t *testing.T) *mesh.Admin {
	t.Helper()
	a, err := mesh.NewAdmin("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// waitFor polls cond until it holds or 10 seconds pass.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// mustRules is security.Rules for a test: it fails the test when the
// rules are invalid.
func mustRules(t testing.TB, rules ...security.Rule) security.Authorizer {
	t.Helper()
	authz, err := security.Rules(rules...)
	if err != nil {
		t.Fatal(err)
	}
	return authz
}

// countRotations counts, from now until the test ends, how many times src
// replaces its SVID, following src.Changed(). It returns the count so far.
func countRotations(t testing.TB, src *security.DevSource) func() int64 {
	var n atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	last, _ := src.GetX509SVID()
	go func() {
		defer close(done)
		for {
			changed := src.Changed()
			if cur, _ := src.GetX509SVID(); cur != last {
				n.Add(1)
				last = cur
			}
			select {
			case <-changed:
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return n.Load
}
