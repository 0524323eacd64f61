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
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/internal/meshtel"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

// sdkProviders returns SDK tracer and meter providers that record into rec
// and reader, shut down when the test ends.
func sdkProviders(t *testing.T) (*tracetest.SpanRecorder, *sdktrace.TracerProvider, *sdkmetric.ManualReader, metric.MeterProvider) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	mp, reader, stop := meshtel.NewManualProvider()
	t.Cleanup(stop)
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

	// Spans: each request is one trace of a client span, its attempt's
	// span and the server's; the server span says how authorization
	// decided, and for the refusal by which rule.
	var spans []sdktrace.ReadOnlySpan
	waitFor(t, func() bool { spans = rec.Ended(); return len(spans) >= 6 })
	traces := map[string][]string{}
	var decisions []string
	for _, s := range spans {
		traces[s.SpanContext().TraceID().String()] = append(traces[s.SpanContext().TraceID().String()], s.SpanKind().String())
		if s.SpanKind().String() == "server" {
			d := s.Name()
			for _, kv := range s.Attributes() {
				if kv.Key == "mesh.authz.decision" || kv.Key == "mesh.authz.rule" {
					d += " " + string(kv.Key) + "=" + kv.Value.Emit()
				}
			}
			decisions = append(decisions, d)
		}
	}
	for id, kinds := range traces {
		sort.Strings(kinds)
		if diff := cmp.Diff([]string{"client", "internal", "server"}, kinds); diff != "" {
			t.Errorf("trace %s spans (-want +got):\n%s", id, diff)
		}
	}
	sort.Strings(decisions)
	if diff := cmp.Diff([]string{"GET /v1/trades/{id} mesh.authz.decision=allow", "GET mesh.authz.decision=deny mesh.authz.rule=default deny"}, decisions); diff != "" {
		t.Errorf("server spans (-want +got):\n%s", diff)
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
		"mesh.http.client.attempts http.request.method=GET http.response.status_code=200 mesh.destination=spiffe://example.org/trading mesh.source=spiffe://example.org/gateway mesh.target=trading.mesh",
		"mesh.http.client.attempts http.request.method=GET http.response.status_code=403 mesh.destination=spiffe://example.org/trading mesh.source=spiffe://example.org/gateway mesh.target=trading.mesh",
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

// TestHTTPClientCountsCallsOutsideRetries: as on gRPC, the client counts
// one call per request however many attempts resilience makes, and the
// attempts apart; a traced call is a client span with a span per attempt;
// the server sees every attempt.
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
	got := map[string]int64{} // metric -> count
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Histogram[float64]:
				for _, dp := range d.DataPoints {
					got[m.Name] += int64(dp.Count)
				}
			case metricdata.Sum[int64]:
				if m.Name == "mesh.http.client.attempts" {
					for _, dp := range d.DataPoints {
						got[m.Name] += dp.Value
					}
				}
			}
		}
	}
	want := map[string]int64{"http.client.request.duration": 1, "mesh.http.client.attempts": 2, "http.server.request.duration": 2}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("requests counted (-want +got):\n%s", diff)
	}
	var attempts []string
	for _, s := range rec.Ended() {
		if s.SpanKind().String() == "client" {
			attempts = append(attempts, "call")
		}
		for _, kv := range s.Attributes() {
			if kv.Key == "mesh.attempt.kind" {
				attempts = append(attempts, kv.Value.Emit())
			}
		}
	}
	sort.Strings(attempts)
	if diff := cmp.Diff([]string{"call", "first", "retry"}, attempts); diff != "" {
		t.Errorf("client spans: want one for the call and one per attempt (-want +got):\n%s", diff)
	}
}

// TestHTTPAttemptSpanNamesRouteAndCluster: a traced request's attempt span
// says which meshd route it took and which cluster it went to.
func TestHTTPAttemptSpanNamesRouteAndCluster(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	c := startVersions(t, []controlplane.Route{{Name: "stable", Version: "v1"}}, mesh.WithTracerProvider(tp))

	ctx, root := tp.Tracer("test").Start(callTimeout(t), "root")
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://trading.mesh/v1/lots", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	root.End()
	var got []string
	for _, s := range rec.Ended() {
		if s.SpanContext().TraceID() != root.SpanContext().TraceID() {
			continue
		}
		for _, kv := range s.Attributes() {
			if kv.Key == "mesh.route" || kv.Key == "mesh.cluster" {
				got = append(got, s.Name()+" "+string(kv.Key)+"="+kv.Value.Emit())
			}
		}
	}
	sort.Strings(got)
	want := []string{"attempt GET mesh.cluster=trading/v1", "attempt GET mesh.route=stable"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("route and cluster on the request's spans (-want +got):\n%s", diff)
	}
}
