package discovery_test

import (
	"context"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/internal/testutil/consul"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

// whoDesc is a one-method service, written by hand so the test needs no
// generated code: /test.Who/Name answers the server's name.
var whoDesc = grpc.ServiceDesc{
	ServiceName: "test.Who",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Name",
		Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := new(emptypb.Empty)
			if err := dec(in); err != nil {
				return nil, err
			}
			h := func(context.Context, any) (any, error) {
				s := srv.(*whoServer)
				s.calls.Add(1)
				return wrapperspb.String(s.name), nil
			}
			if interceptor == nil {
				return h(ctx, in)
			}
			return interceptor(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: "/test.Who/Name"}, h)
		},
	}},
}

type whoServer struct {
	name  string
	calls atomic.Int64
}

// startMeshServer serves whoDesc with identity id on loopback and returns
// its port.
func startMeshServer(t *testing.T, ca *security.DevCA, id spiffeid.ID, w *whoServer) int {
	t.Helper()
	src, err := ca.Source(id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	srv, err := mesh.NewServer(mesh.WithIdentity(src), mesh.WithDrainTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	srv.RegisterService(&whoDesc, w)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ctx, ln)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	n, _ := strconv.Atoi(port)
	return n
}

// TestWrongSPIFFEIDRefused: an instance registered under a service name but
// presenting another identity gets no calls through mesh.Dial; the one
// presenting the expected identity gets them all, and with only the
// impostor left calls fail instead of reaching it.
func TestWrongSPIFFEIDRefused(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	ca, err := security.NewDevCA(td, security.DevCAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	f := consul.Start(t)
	reg, err := discovery.New(discovery.Config{Consul: f.Client(), TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	good, impostor := &whoServer{name: "good"}, &whoServer{name: "impostor"}
	goodPort := startMeshServer(t, ca, spiffeid.RequireFromString("spiffe://example.org/service/trading"), good)
	badPort := startMeshServer(t, ca, spiffeid.RequireFromString("spiffe://example.org/service/impostor"), impostor)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Both claim to be "trading" in Consul; Register advertises the derived
	// ID spiffe://example.org/service/trading for both.
	for _, p := range []int{goodPort, badPort} {
		r, err := reg.Register(ctx, discovery.Service{Name: "trading", Address: "127.0.0.1", Port: p})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Close() })
	}
	r, err := reg.Register(ctx, discovery.Service{Name: "lonely", Address: "127.0.0.1", Port: badPort})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })

	clientSrc, err := ca.Source(spiffeid.RequireFromString("spiffe://example.org/service/web"))
	if err != nil {
		t.Fatal(err)
	}
	defer clientSrc.Close()
	dialOpts := mesh.WithRegistry(reg)

	conn, err := mesh.Dial(ctx, "consul:///trading", mesh.WithIdentity(clientSrc), dialOpts)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const calls = 200
	for i := range calls {
		out := new(wrapperspb.StringValue)
		if err := conn.Invoke(ctx, "/test.Who/Name", &emptypb.Empty{}, out, grpc.WaitForReady(true)); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if out.Value != "good" {
			t.Fatalf("call %d answered by %q", i, out.Value)
		}
	}
	if n := impostor.calls.Load(); n != 0 {
		t.Errorf("impostor handled %d calls", n)
	}
	t.Logf("%d calls: good=%d impostor=%d", calls, good.calls.Load(), impostor.calls.Load())

	lonely, err := mesh.Dial(ctx, "consul:///lonely", mesh.WithIdentity(clientSrc), dialOpts)
	if err != nil {
		t.Fatal(err)
	}
	defer lonely.Close()
	callCtx, callCancel := context.WithTimeout(ctx, 2*time.Second)
	defer callCancel()
	err = lonely.Invoke(callCtx, "/test.Who/Name", &emptypb.Empty{}, new(wrapperspb.StringValue))
	if code := status.Code(err); code != codes.Unavailable {
		t.Errorf("call to the impostor alone: %v, want Unavailable", err)
	}
	if n := impostor.calls.Load(); n != 0 {
		t.Errorf("impostor handled %d calls", n)
	}
	t.Logf("impostor alone: %v", err)
}
