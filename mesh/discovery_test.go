package mesh_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/internal/admin"
	"github.com/gridmesh/gridmesh/internal/testutil/consul"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/resilience"
)

func TestDialStaticTargetBalancesRoundRobin(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	var addrs []string
	var svcs []*echoService
	for i := 0; i < 3; i++ {
		svc := &echoService{}
		svcs = append(svcs, svc)
		addrs = append(addrs, startServer(t, svc, mesh.WithIdentity(devSource(t, ca, "/trading"))))
	}
	target := "static:///" + strings.Join(addrs, ",") + "?spiffe_id=spiffe://example.org/trading"
	client := dial(t, target, mesh.WithIdentity(devSource(t, ca, "/gateway")))
	// Round robin spreads over the connections that are ready: warm up
	// until every backend has served a call, then measure.
	waitFor(t, func() bool {
		if _, err := client.UnaryCall(callTimeout(t), &testpb.SimpleRequest{}); err != nil {
			t.Fatalf("warm-up call: %v", err)
		}
		return svcs[0].calls.Load() > 0 && svcs[1].calls.Load() > 0 && svcs[2].calls.Load() > 0
	})
	var before [3]int64
	for i, svc := range svcs {
		before[i] = svc.calls.Load()
	}
	const calls = 300
	for i := 0; i < calls; i++ {
		if _, err := client.UnaryCall(callTimeout(t), &testpb.SimpleRequest{}); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	for i, svc := range svcs {
		if got := svc.calls.Load() - before[i]; got != calls/3 {
			t.Errorf("backend %d got %d calls, want %d (round robin)", i, got, calls/3)
		}
	}
}

func TestDialRefusesInvalidBalancer(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	_, err := mesh.Dial(context.Background(), "static:///127.0.0.1:1", mesh.WithIdentity(devSource(t, ca, "/gateway")),
		mesh.WithBalancer(discovery.Balancer{Policy: discovery.RingHash}))
	if err == nil || !strings.Contains(err.Error(), "HashHeader") {
		t.Fatalf("Dial with ring_hash and no HashHeader: err = %v, want one naming HashHeader", err)
	}
}

// TestServeRegistersInConsulAndDeregisters: a server with WithRegistration
// is registered with its listener's address and SPIFFE ID, is found through
// consul:/// while serving, and is gone once Serve returns.
func TestServeRegistersInConsulAndDeregisters(t *testing.T) {
	agent := consul.Start(t)
	reg, err := discovery.New(discovery.Config{Consul: agent.Client(), TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	ca := newDevCA(t, time.Hour)
	svc := &echoService{}
	srv, err := mesh.NewServer(mesh.WithIdentity(devSource(t, ca, "/service/trading")),
		mesh.WithRegistration(reg, discovery.Service{Name: "trading", Tags: []string{"v1"}}))
	if err != nil {
		t.Fatal(err)
	}
	testgrpc.RegisterTestServiceServer(srv, svc)
	lis := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()
	defer srv.Close()

	health := func() []string {
		entries, _, err := agent.Client().Health().Service("trading", "", false, nil)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range entries {
			out = append(out, fmt.Sprintf("%s:%d %s %s", e.Service.Address, e.Service.Port, e.Checks.AggregatedStatus(), e.Service.Meta[discovery.MetaSPIFFEID]))
		}
		return out
	}
	want := lis.Addr().String() + " " + api.HealthPassing + " spiffe://example.org/service/trading"
	waitFor(t, func() bool { h := health(); return len(h) == 1 && h[0] == want })

	client := dial(t, "consul:///trading?tag=v1", mesh.WithIdentity(devSource(t, ca, "/service/gateway")), mesh.WithRegistry(reg))
	if _, err := client.UnaryCall(callTimeout(t), &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("call through consul:///trading: %v", err)
	}

	cancel()
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if h := health(); len(h) != 0 {
		t.Errorf("after Serve returned, Consul still has %v", h)
	}
}

// TestAdminShowsDiscoveredEndpoints: with the admin endpoint on, a client's
// target lists the endpoints discovery gives, with their expected IDs and
// the balancer policy.
func TestAdminShowsDiscoveredEndpoints(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	addr := startServer(t, &echoService{}, mesh.WithIdentity(devSource(t, ca, "/trading")))
	target := "static:///" + addr + "?spiffe_id=spiffe://example.org/trading"
	adm := newAdmin(t)
	cc, err := mesh.Dial(callTimeout(t), target, mesh.WithIdentity(devSource(t, ca, "/gateway")),
		mesh.WithAdmin(adm), mesh.WithBalancer(discovery.Balancer{Policy: discovery.LeastRequest}))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	var st admin.Status
	waitFor(t, func() bool {
		st = getJSON[admin.Status](t, "http://"+adm.Addr()+"/status")
		return len(st.Targets) == 1 && len(st.Targets[0].Endpoints) == 1
	})
	tg := st.Targets[0]
	want := admin.Endpoint{Address: addr, Identity: "spiffe://example.org/trading", Weight: 1}
	if diff := cmp.Diff(want, tg.Endpoints[0]); diff != "" {
		t.Errorf("endpoint (-want +got):\n%s", diff)
	}
	if tg.Balancer != "least_request" {
		t.Errorf("balancer = %q, want least_request", tg.Balancer)
	}
}

func TestDialConsulTargetWithoutRegistryExplainsFix(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	_, err := mesh.Dial(callTimeout(t), "consul:///trading", mesh.WithIdentity(devSource(t, ca, "/gateway")))
	if err == nil || !strings.Contains(err.Error(), "mesh.WithRegistry") {
		t.Fatalf("err = %v, want one naming mesh.WithRegistry", err)
	}
}

// unavailableService fails every UnaryCall with UNAVAILABLE, counting runs.
type unavailableService struct {
	testgrpc.UnimplementedTestServiceServer
	runs atomic.Int64
}

func (s *unavailableService) UnaryCall(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.runs.Add(1)
	return nil, status.Error(codes.Unavailable, "down for the test")
}

// TestConsulMetaSetsResiliencePolicy: a consul:/// client retries as the
// service's resilience-* meta says, follows a change, and keeps the policy
// in force when the meta turns bad.
func TestConsulMetaSetsResiliencePolicy(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	agent := consul.Start(t)
	reg, err := discovery.New(discovery.Config{Consul: agent.Client(), TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	svc := &unavailableService{}
	addr := startServer(t, svc, mesh.WithIdentity(devSource(t, ca, "/service/trading")))
	host, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	setMeta := func(meta map[string]string) {
		t.Helper()
		if err := agent.Client().Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "trading-1", Name: "trading",
			Address: host, Port: port, Meta: meta, Check: &api.AgentServiceCheck{TTL: "1h", Status: api.HealthPassing}}); err != nil {
			t.Fatal(err)
		}
	}
	setMeta(map[string]string{"resilience-retry-max-attempts": "5"})

	var logs lockedBuffer
	adm := newAdmin(t)
	const target = "consul:///trading"
	cc, err := mesh.Dial(callTimeout(t), target, mesh.WithIdentity(devSource(t, ca, "/gateway")), mesh.WithRegistry(reg),
		mesh.WithAdmin(adm), mesh.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := testgrpc.NewTestServiceClient(cc)
	policy := func() admin.Policy {
		for _, p := range getJSON[admin.ConfigView](t, "http://"+adm.Addr()+"/config").Policies {
			if p.Kind == "resilience" && p.Scope == target {
				return p
			}
		}
		return admin.Policy{}
	}
	// runsPerCall makes one keyed call (so UNAVAILABLE after the handler
	// ran may be retried) and returns how often the handler ran.
	runsPerCall := func(key string) int64 {
		t.Helper()
		before := svc.runs.Load()
		_, err := client.UnaryCall(resilience.WithIdempotencyKey(callTimeout(t), key), &testpb.SimpleRequest{}, grpc.WaitForReady(true))
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("call: %v, want Unavailable", err)
		}
		return svc.runs.Load() - before
	}

	// The admin endpoint shows a destination's policy once it has been
	// called; the log says when Consul's meta was applied.
	applied := func(n int) func() bool {
		return func() bool { return strings.Count(logs.String(), "resilience policy from Consul meta applied") >= n }
	}
	waitFor(t, applied(1))
	if n := runsPerCall("k1"); n != 5 {
		t.Errorf("with resilience-retry-max-attempts=5 the handler ran %d times, want 5", n)
	}
	if p := policy(); p.Source != "consul" || !strings.Contains(p.Detail, "retry up to 5 attempts") {
		t.Errorf("policy shown %+v, want 5 attempts from consul", p)
	}

	setMeta(map[string]string{"resilience-retry-max-attempts": "2"})
	waitFor(t, applied(2))
	if n := runsPerCall("k2"); n != 2 {
		t.Errorf("with resilience-retry-max-attempts=2 the handler ran %d times, want 2", n)
	}

	setMeta(map[string]string{"resilience-retry-max-attempts": "two"})
	waitFor(t, func() bool { return strings.Contains(logs.String(), "Consul resilience meta refused") })
	if n := runsPerCall("k3"); n != 2 {
		t.Errorf("after bad meta the handler ran %d times, want 2 (the last good policy)", n)
	}
	if p := policy(); p.Source != "consul" || !strings.Contains(p.Detail, "retry up to 2 attempts") {
		t.Errorf("after bad meta the policy is %+v, want the last good one (2 attempts, from consul)", p)
	}
	if !strings.Contains(logs.String(), "resilience-retry-max-attempts") {
		t.Errorf("the log does not name the bad key:\n%s", logs.String())
	}

	// A second instance that disagrees: the policy in force stays.
	setMeta(map[string]string{"resilience-retry-max-attempts": "2"})
	other := startServer(t, &unavailableService{}, mesh.WithIdentity(devSource(t, ca, "/service/trading")))
	ohost, oportStr, _ := net.SplitHostPort(other)
	oport, _ := strconv.Atoi(oportStr)
	if err := agent.Client().Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "trading-2", Name: "trading",
		Address: ohost, Port: oport, Meta: map[string]string{"resilience-retry-max-attempts": "4"},
		Check: &api.AgentServiceCheck{TTL: "1h", Status: api.HealthPassing}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return strings.Contains(logs.String(), "disagree on resilience-retry-max-attempts") })
	if err := agent.Client().Agent().ServiceDeregister("trading-2"); err != nil {
		t.Fatal(err)
	}

	setMeta(nil) // no resilience meta: back to the default policy
	waitFor(t, applied(3))
	if n := runsPerCall("k4"); n != int64(resilience.Default().Retry.MaxAttempts) {
		t.Errorf("without meta the handler ran %d times, want the default %d", n, resilience.Default().Retry.MaxAttempts)
	}
	if p := policy(); p.Source != "code" {
		t.Errorf("without meta the policy is %+v, want the default from code", p)
	}
}
