package mesh_test

import (
	"context"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

// sdkProviders returns SDK tracer and meter providers that record into rec
// and reader, shut down when the test ends.
func sdkProviders(t *testing.T) (*tracetest.SpanRecorder, *sdktrace.TracerProvider, *sdkmetric.ManualReader, *sdkmetric.MeterProvider) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { mp.Shutdown(context.Background()) })
	return rec, tp, reader, mp
}

// TestHTTPTelemetry checks the HTTP side's spans (one trace from client to
// server) and mesh metrics (both identities, the route pattern, denials).
func TestHTTPTelemetry(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	rec, tp, reader, mp := sdkProviders(t)

	authz, err := security.HTTPRules(security.Allow("reads", spiffeid.MatchAny(), "GET /v1/trades/*"))
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/trades/{id}", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	addr, _ := startHTTPServer(t, mux, mesh.WithIdentity(devSource(t, ca, "/trading")),
		mesh.WithAuthorizer(authz), mesh.WithTracerProvider(tp), mesh.WithMeterProvider(mp))
	c := httpClient(t, mesh.WithIdentity(devSource(t, ca, "/gateway")), mesh.WithTracerProvider(tp), mesh.WithMeterProvider(mp),
		mesh.WithHTTPTarget("trading.mesh", "static:///"+addr))

	for _, path := range []string{"/v1/trades/42", "/v1/accounts/1"} { // the second is refused
		getOnce(t, c, "http://trading.mesh"+path)
	}

	// Spans: client and server of the allowed request share a trace.
	var spans []sdktrace.ReadOnlySpan
	waitFor(t, func() bool { spans = rec.Ended(); return len(spans) >= 4 })
	traces := map[string][]string{}
	for _, s := range spans {
		traces[s.SpanContext().TraceID().String()] = append(traces[s.SpanContext().TraceID().String()], s.SpanKind().String())
	}
	for id, kinds := range traces {
		sort.Strings(kinds)
		if diff := cmp.Diff([]string{"client", "server"}, kinds); diff != "" {
			t.Errorf("trace %s spans (-want +got):\n%s", id, diff)
		}
	}

	// Metrics.
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok || !strings.HasPrefix(m.Name, "mesh.") {
				continue
			}
			for _, dp := range sum.DataPoints {
				var kv []string
				for _, a := range dp.Attributes.ToSlice() {
					kv = append(kv, string(a.Key)+"="+a.Value.Emit())
				}
				got = append(got, m.Name+" "+strings.Join(kv, " "))
			}
		}
	}
	sort.Strings(got)
	for _, want := range []string{
		"mesh.authz.denials mesh.authz.rule=default deny mesh.source=spiffe://example.org/gateway rpc.method=GET",
		"mesh.rpc.requests mesh.destination=spiffe://example.org/trading mesh.side=server mesh.source=spiffe://example.org/gateway mesh.target= rpc.grpc.status_code=200 rpc.method=GET /v1/trades/{id}",
		"mesh.rpc.requests mesh.destination=spiffe://example.org/trading mesh.side=server mesh.source=spiffe://example.org/gateway mesh.target= rpc.grpc.status_code=403 rpc.method=GET",
		"mesh.rpc.requests mesh.destination=spiffe://example.org/trading mesh.side=client mesh.source=spiffe://example.org/gateway mesh.target=trading.mesh rpc.grpc.status_code=200 rpc.method=GET",
	} {
		found := false
		for _, g := range got {
			if g == want {
				found = true
			}
		}
		if !found {
			t.Errorf("no metric data point containing %q in:\n%s", want, strings.Join(got, "\n"))
		}
	}
}

// TestHTTPClientCountsCallsOutsideRetries: as on gRPC, the client's mesh
// metrics count one call per request however many attempts resilience
// makes, while OTel has a client span per attempt; the server sees every
// attempt.
func TestHTTPClientCountsCallsOutsideRetries(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	rec, tp, reader, mp := sdkProviders(t)

	var calls atomic.Int64
	addr, _ := startHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			http.Error(w, "warming up", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok")
	}), mesh.WithIdentity(devSource(t, ca, "/trading")), mesh.WithMeterProvider(mp))
	c := httpClient(t, mesh.WithIdentity(devSource(t, ca, "/gateway")), mesh.WithTracerProvider(tp), mesh.WithMeterProvider(mp),
		mesh.WithHTTPTarget("trading.mesh", "static:///"+addr))
	req, _ := http.NewRequestWithContext(callTimeout(t), http.MethodGet, "http://trading.mesh/v1/lots", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || calls.Load() != 2 {
		t.Fatalf("status %d after %d attempts; want 200 after a retried 503", resp.StatusCode, calls.Load())
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{} // side -> requests counted
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok || m.Name != "mesh.rpc.requests" {
				continue
			}
			for _, dp := range sum.DataPoints {
				side, _ := dp.Attributes.Value("mesh.side")
				got[side.AsString()] += dp.Value
			}
		}
	}
	if diff := cmp.Diff(map[string]int64{"client": 1, "server": 2}, got); diff != "" {
		t.Errorf("mesh.rpc.requests by side (-want +got):\n%s", diff)
	}
	clientSpans := 0
	for _, s := range rec.Ended() {
		if s.SpanKind().String() == "client" {
			clientSpans++
		}
	}
	if clientSpans != 2 {
		t.Errorf("%d client spans, want one per attempt (2)", clientSpans)
	}
}
