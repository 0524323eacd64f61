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

// world is a set of meshed services on one dev CA, each exporting its
// spans over OTLP to one Jaeger.
type world struct {
	t         *testing.T
	ctx       context.Context
	ca        *security.DevCA
	providers []*telemetry.Providers
}

func newWorld(t *testing.T, j *jaeger.Jaeger, ctx context.Context) *world {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+j.OTLPGRPC)
	t.Setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
	ca, err := security.NewDevCA(td, security.DevCAConfig{SVIDTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return &world{t: t, ctx: ctx, ca: ca}
}

// service sets up name's telemetry from the environment (traces to Jaeger
// when traced, else metrics only) and returns its mesh options.
func (w *world) service(name string, traced bool) ([]mesh.Option, *telemetry.Providers) {
	t := w.t
	cfg := telemetry.FromEnv()
	cfg.ServiceName, cfg.NoGlobal = name, true
	cfg.Traces = "otlp"
	if !traced { // metrics only: telemetry on, no spans
		cfg.Traces, cfg.Metrics, cfg.PrometheusAddr = "none", "prometheus", "-"
	}
	p, err := telemetry.Setup(w.ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	w.providers = append(w.providers, p)
	t.Cleanup(func() { p.Shutdown(context.Background()) })
	src, err := w.ca.Source(spiffeid.RequireFromPath(td, "/"+name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return []mesh.Option{mesh.WithIdentity(src), mesh.WithTracerProvider(p.TracerProvider), mesh.WithMeterProvider(p.MeterProvider)}, p
}

func (w *world) serve(opts []mesh.Option, svc testgrpc.TestServiceServer) string {
	t := w.t
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

func (w *world) dial(opts []mesh.Option, addr string) testgrpc.TestServiceClient {
	var dopts []mesh.DialOption
	for _, o := range opts {
		dopts = append(dopts, o)
	}
	cc, err := mesh.Dial(w.ctx, addr, dopts...)
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { cc.Close() })
	return testgrpc.NewTestServiceClient(cc)
}

// span is a span as Jaeger shows it: its service, name, kind, the mesh's
// caller and callee identities and attempt number, and its parent as
// "service kind".
type span struct{ Service, Name, Kind, Source, Dest, Attempt, Parent string }

// trace flushes every service until Jaeger holds n spans of traceID, and
// returns them sorted.
func (w *world) trace(j *jaeger.Jaeger, traceID string, n int) []span {
	t := w.t
	var tr jaeger.Trace
	var err error
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, p := range w.providers {
			if err := p.ForceFlush(w.ctx); err != nil {
				t.Fatal(err)
			}
		}
		tr, err = j.Trace(w.ctx, traceID)
		if err == nil && len(tr.Spans) >= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("trace %s in Jaeger: %d spans, %v; want %d", traceID, len(tr.Spans), err, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
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
			s.Tag("mesh.source"), s.Tag("mesh.destination"), s.Tag("mesh.attempt"), parent})
	}
	sort.Slice(got, func(i, j int) bool {
		return got[i].Service+got[i].Kind+got[i].Parent < got[j].Service+got[j].Kind+got[j].Parent
	})
	return got
}

const m = "grpc.testing.TestService/UnaryCall"

func id(n string) string { return "spiffe://example.org/" + n }

// TestCallAcrossThreeServicesIsOneTraceInJaeger runs web -> gateway ->
// trading -> registry, each with its own OTLP exporter set up from the
// standard environment by telemetry.Setup, and reads the trace back from
// Jaeger's query API: every call a client span, its attempt a span
// beneath, the server's span beneath the attempt.
func TestCallAcrossThreeServicesIsOneTraceInJaeger(t *testing.T) {
	j := jaeger.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w := newWorld(t, j, ctx)
	registry, _ := w.service("registry", true)
	trading, _ := w.service("trading", true)
	gateway, _ := w.service("gateway", true)
	web, webP := w.service("web", true)
	registryAddr := w.serve(registry, &relay{})
	tradingAddr := w.serve(trading, &relay{next: w.dial(trading, registryAddr)})
	gatewayAddr := w.serve(gateway, &relay{next: w.dial(gateway, tradingAddr)})
	client := w.dial(web, gatewayAddr)

	callCtx, root := webP.TracerProvider.Tracer("web").Start(ctx, "place order")
	if _, err := client.UnaryCall(callCtx, &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("call through gateway, trading, registry: %v", err)
	}
	root.End()
	traceID := root.SpanContext().TraceID().String()
	got := w.trace(j, traceID, 10)
	want := []span{
		{"gateway", m, "client", id("gateway"), id("trading"), "", "gateway server"},
		{"gateway", "attempt " + m, "internal", "", id("trading"), "1", "gateway client"},
		{"gateway", m, "server", id("web"), id("gateway"), "", "web internal"},
		{"registry", m, "server", id("trading"), id("registry"), "", "trading internal"},
		{"trading", m, "client", id("trading"), id("registry"), "", "trading server"},
		{"trading", "attempt " + m, "internal", "", id("registry"), "1", "trading client"},
		{"trading", m, "server", id("gateway"), id("trading"), "", "gateway internal"},
		{"web", m, "client", id("web"), id("gateway"), "", "web internal"},
		{"web", "place order", "internal", "", "", "", "-"},
		{"web", "attempt " + m, "internal", "", id("gateway"), "1", "web client"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("trace %s in Jaeger (-want +got):\n%s", traceID, diff)
	}
}

// TestUnsampledHopKeepsOneTraceInJaeger runs web -> gateway -> trading
// with gateway not tracing (its telemetry set up with metrics and no
// traces): gateway records no span and passes web's W3C context on
// unchanged, so trading's spans join web's trace, trading's server span a
// child of web's attempt.
func TestUnsampledHopKeepsOneTraceInJaeger(t *testing.T) {
	j := jaeger.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w := newWorld(t, j, ctx)
	trading, _ := w.service("trading", true)
	gateway, _ := w.service("gateway", false)
	web, webP := w.service("web", true)
	tradingAddr := w.serve(trading, &relay{})
	gatewayAddr := w.serve(gateway, &relay{next: w.dial(gateway, tradingAddr)})
	client := w.dial(web, gatewayAddr)

	callCtx, root := webP.TracerProvider.Tracer("web").Start(ctx, "place order")
	if _, err := client.UnaryCall(callCtx, &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("call through gateway and trading: %v", err)
	}
	root.End()
	traceID := root.SpanContext().TraceID().String()
	got := w.trace(j, traceID, 4)
	want := []span{
		{"trading", m, "server", id("gateway"), id("trading"), "", "web internal"},
		{"web", m, "client", id("web"), id("gateway"), "", "web internal"},
		{"web", "place order", "internal", "", "", "", "-"},
		{"web", "attempt " + m, "internal", "", id("gateway"), "1", "web client"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("trace %s in Jaeger (-want +got):\n%s", traceID, diff)
	}
}
