package discovery_test

import (
	"context"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/orca"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/internal/testutil/consul"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// backend is a plaintext gRPC server on loopback that answers health Check
// calls with its name in the "backend" response header.
type backend struct {
	name  string
	addr  string
	host  string
	port  int
	srv   *grpc.Server
	calls atomic.Int64
	// util, when set, is the application utilization the backend reports
	// to weighted_round_robin through per-call ORCA trailers, with 100 qps.
	util float64
	// failing makes every call fail with UNAVAILABLE.
	failing atomic.Bool
}

type healthServer struct {
	healthpb.UnimplementedHealthServer
	b *backend
}

func (h healthServer) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	h.b.calls.Add(1)
	_ = grpc.SetHeader(ctx, metadata.Pairs("backend", h.b.name))
	if h.b.failing.Load() {
		return nil, status.Error(codes.Unavailable, h.b.name+" is failing")
	}
	if h.b.util > 0 {
		rec := orca.CallMetricsRecorderFromContext(ctx)
		rec.SetQPS(100)
		rec.SetApplicationUtilization(h.b.util)
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func startBackend(t *testing.T, name string) *backend {
	return startBackendUtil(t, name, 0)
}

func startBackendUtil(t *testing.T, name string, util float64) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{name: name, addr: ln.Addr().String(), srv: grpc.NewServer(orca.CallMetricsServerOption(nil)), util: util}
	host, port, _ := net.SplitHostPort(b.addr)
	b.host = host
	b.port, _ = strconv.Atoi(port)
	healthpb.RegisterHealthServer(b.srv, healthServer{b: b})
	go func() { _ = b.srv.Serve(ln) }()
	t.Cleanup(b.srv.Stop)
	return b
}

func startBackends(t *testing.T, n int) []*backend {
	t.Helper()
	var bs []*backend
	for i := range n {
		bs = append(bs, startBackend(t, "b"+strconv.Itoa(i)))
	}
	return bs
}

// newRegistry returns a Registry on the agent (none when nil) with the
// default retry backoff (whose bound the outage tests measure) and 2s
// blocking queries (so an agent that stops answering is
// noticed within consulwatch.QueryTimeout(2s)), recording its events.
func newRegistry(t *testing.T, f *consul.Agent, opts ...discovery.Option) (*discovery.Registry, *eventLog) {
	t.Helper()
	ev := &eventLog{}
	cfg := discovery.Config{WaitTime: 2 * time.Second}
	if f != nil {
		cfg.Consul = f.Client()
	}
	reg, err := discovery.New(cfg, append([]discovery.Option{discovery.WithEvents(ev.add)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return reg, ev
}

type eventLog struct {
	mu     sync.Mutex
	events []discovery.Event
}

func (l *eventLog) add(e discovery.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
}

func (l *eventLog) count(k discovery.EventKind) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, e := range l.events {
		if e.Kind == k {
			n++
		}
	}
	return n
}

// registerBackend registers b as an instance of service through Register,
// which heartbeats it.
func registerBackend(t *testing.T, reg *discovery.Registry, service string, b *backend, tags ...string) *discovery.Registration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := reg.Register(ctx, discovery.Service{
		Name: service, ID: b.name, Address: b.host, Port: b.port, Tags: tags, TTL: 2 * time.Second,
	})
	if err != nil {
		t.Fatalf("register %s: %v", b.name, err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// registerRaw registers b with the agent directly, with a TTL check that
// nobody heartbeats after the first pass (a process that crashes).
func registerRaw(t *testing.T, c *api.Client, service string, b *backend, ttl string, meta map[string]string) {
	t.Helper()
	err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: b.name, Name: service, Address: b.host, Port: b.port, Meta: meta,
		Check: &api.AgentServiceCheck{CheckID: "service:" + b.name, TTL: ttl, Status: api.HealthPassing, DeregisterCriticalServiceAfter: "1m"},
	})
	if err != nil {
		t.Fatal(err)
	}
}

func dial(t *testing.T, reg *discovery.Registry, target string, b discovery.Balancer) *grpc.ClientConn {
	t.Helper()
	opts, err := reg.DialOptions(b)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(target, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatalf("dial %s: %v", target, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// call makes one call, with hash key key when not empty, and returns the
// backend that answered (also when it answered with an error).
func call(ctx context.Context, conn *grpc.ClientConn, key string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "x-market-id", key)
	}
	var hdr metadata.MD
	_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&hdr), grpc.WaitForReady(true))
	name := ""
	if v := hdr.Get("backend"); len(v) > 0 {
		name = v[0]
	}
	return name, err
}

// pollUntil calls cond every 10ms until it holds or d passes, and returns
// how long that took and whether it held.
func pollUntil(d time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for {
		if cond() {
			return time.Since(start), true
		}
		if time.Since(start) > d {
			return time.Since(start), false
		}
		time.Sleep(10 * time.Millisecond)
	}
}
