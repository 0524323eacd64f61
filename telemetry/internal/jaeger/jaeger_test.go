package jaeger_test

import (
	"context"
	"net"
	"sort"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
	"github.com/gridmesh/gridmesh/telemetry"
	"github.com/gridmesh/gridmesh/telemetry/internal/jaeger"
)

func TestMain(m *testing.M) {
	// The OTLP exporters keep an idle HTTP/2 reader until their process
	// ends; they are shut down, so only these may remain.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"))
}

var td = spiffeid.RequireTrustDomainFromString("example.org")

type relay struct {
	testgrpc.UnimplementedTestServiceServer
	next testgrpc.TestServiceClient
}

func (r *relay) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	if r.next == nil {
		return &testpb.SimpleResponse{}, nil
	}
	return r.next.UnaryCall(ctx, req)
}

// TestCallAcrossThreeServicesIsOneTraceInJaeger runs web -> gateway ->
// trading -> registry, each with its own OTLP exporter set up from the
// standard environment by telemetry.Setup, and reads the trace back from
// Jaeger's query API.
func TestCallAcrossThreeServicesIsOneTraceInJaeger(t *testing.T) {
	j := jaeger.Start(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+j.OTLPGRPC)
	t.Setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
	t.Setenv("OTEL_TRACES_EXPORTER", "otlp")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	ca, err := security.NewDevCA(td, security.DevCAConfig{SVIDTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	var providers []*telemetry.Providers
	service := func(name string) []mesh.Option {
		cfg := telemetry.FromEnv()
		cfg.ServiceName, cfg.NoGlobal = name, true
		p, err := telemetry.Setup(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		providers = append(providers, p)
		t.Cleanup(func() { p.Shutdown(context.Background()) })
		src, err := ca.Source(spiffeid.RequireFromPath(td, "/"+name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { src.Close() })
		return []mesh.Option{mesh.WithIdentity(src), mesh.WithTracerProvider(p.TracerProvider)}
	}
	serve := func(opts []mesh.Option, svc testgrpc.TestServiceServer) string {
		var sopts []mesh.ServerOption
		for _, o := range opts {
			sopts = append(sopts, o)
		}
		srv, err := mesh.NewServer(sopts...)
		if err != nil {
			t.Fatal(err)
		}
		testgrpc.RegisterTestServiceServer(srv, svc)
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		sctx, scancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- srv.Serve(sctx, lis) }()
		t.Cleanup(func() { scancel(); srv.Close(); <-done })
		return lis.Addr().String()
	}
	dial := func(opts []mesh.Option, addr string) testgrpc.TestServiceClient {
		var dopts []mesh.DialOption
		for _, o := range opts {
			dopts = append(dopts, o)
		}
		cc, err := mesh.Dial(ctx, addr, dopts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return testgrpc.NewTestServiceClient(cc)
	}

	registry := service("registry")
	trading := service("trading")
	gateway := service("gateway")
	web := service("web")
	registryAddr := serve(registry, &relay{})
	tradingAddr := serve(trading, &relay{next: dial(trading, registryAddr)})
	gatewayAddr := serve(gateway, &relay{next: dial(gateway, tradingAddr)})
	client := dial(web, gatewayAddr)

	webTP := providers[3].TracerProvider
	callCtx, root := webTP.Tracer("web").Start(ctx, "place order")
	if _, err := client.UnaryCall(callCtx, &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("call through gateway, trading, registry: %v", err)
	}
	root.End()
	traceID := root.SpanContext().TraceID().String()
	// Server spans end after their response: flush until all seven are in.
	var tr jaeger.Trace
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, p := range providers {
			if err := p.ForceFlush(ctx); err != nil {
				t.Fatal(err)
			}
		}
		tr, err = j.Trace(ctx, traceID)
		if err == nil && len(tr.Spans) >= 7 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("trace %s in Jaeger: %d spans, %v; want 7", traceID, len(tr.Spans), err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	type span struct{ Service, Name, Kind, Self, Peer, Parent string }
	byID := map[string]jaeger.Span{}
	for _, s := range tr.Spans {
		byID[s.SpanID] = s
	}
	var got []span
	for _, s := range tr.Spans {
		if s.TraceID != tr.TraceID {
			t.Errorf("span %s is in trace %s, want %s", s.OperationName, s.TraceID, tr.TraceID)
		}
		parent := "-"
		for _, ref := range s.References {
			if p, ok := byID[ref.SpanID]; ok && ref.RefType == "CHILD_OF" {
				parent = tr.Processes[p.ProcessID].ServiceName + " " + p.Tag("span.kind")
			}
		}
		got = append(got, span{tr.Processes[s.ProcessID].ServiceName, s.OperationName, s.Tag("span.kind"),
			s.Tag("mesh.spiffe_id"), s.Tag("mesh.peer.spiffe_id"), parent})
	}
	sort.Slice(got, func(i, j int) bool { return got[i].Service+got[i].Kind < got[j].Service+got[j].Kind })
	const m = "grpc.testing.TestService/UnaryCall"
	id := func(n string) string { return "spiffe://example.org/" + n }
	want := []span{
		{"gateway", m, "client", id("gateway"), id("trading"), "gateway server"},
		{"gateway", m, "server", id("gateway"), id("web"), "web client"},
		{"registry", m, "server", id("registry"), id("trading"), "trading client"},
		{"trading", m, "client", id("trading"), id("registry"), "trading server"},
		{"trading", m, "server", id("trading"), id("gateway"), "gateway client"},
		{"web", m, "client", id("web"), id("gateway"), "web internal"},
		{"web", "place order", "internal", "", "", "-"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("trace %s in Jaeger (-want +got):\n%s", traceID, diff)
	}
}
