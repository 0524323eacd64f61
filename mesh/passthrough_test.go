package mesh_test

import (
	"context"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	"github.com/gridmesh/gridmesh/mesh"
)

// w3c is the W3C context an unsampled caller sends: traceparent with the
// sampled flag off, a tracestate and baggage the mesh must not touch.
var w3c = map[string]string{
	"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
	"tracestate":  "vendor=opaque-value,other=1",
	"baggage":     "tenant=acme",
}

// captureService answers UnaryCall by calling next, or, as the last hop,
// records the W3C metadata it received.
type captureService struct {
	testgrpc.UnimplementedTestServiceServer
	next testgrpc.TestServiceClient
	mu   sync.Mutex
	got  map[string]string
}

func (s *captureService) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	if s.next != nil {
		return s.next.UnaryCall(ctx, req)
	}
	md, _ := metadata.FromIncomingContext(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = map[string]string{}
	for k := range w3c {
		if v := md.Get(k); len(v) > 0 {
			s.got[k] = v[0]
		}
	}
	return &testpb.SimpleResponse{}, nil
}

// TestTraceparentPassesThroughUnsampledService: a service that traces
// (an SDK provider sampling every new trace) receives a call whose caller
// did not sample; it starts no span, and the service it calls receives
// traceparent, tracestate and baggage exactly as they were sent. Both
// protocols.
func TestTraceparentPassesThroughUnsampledService(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	traced := mesh.WithTracerProvider(tp)

	t.Run("grpc", func(t *testing.T) {
		last := &captureService{}
		lastAddr := startRelay(t, last, mesh.WithIdentity(devSource(t, ca, "/registry")), mesh.WithoutTelemetry())
		middle := &captureService{next: dial(t, lastAddr, mesh.WithIdentity(devSource(t, ca, "/trading")), traced)}
		middleAddr := startRelay(t, middle, mesh.WithIdentity(devSource(t, ca, "/trading")), traced)
		client := dial(t, middleAddr, mesh.WithIdentity(devSource(t, ca, "/gateway")), mesh.WithoutTelemetry())

		ctx := metadata.AppendToOutgoingContext(callTimeout(t), "traceparent", w3c["traceparent"], "tracestate", w3c["tracestate"], "baggage", w3c["baggage"])
		if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
			t.Fatal(err)
		}
		last.mu.Lock()
		defer last.mu.Unlock()
		if diff := cmp.Diff(w3c, last.got); diff != "" {
			t.Errorf("W3C context at the last hop (-sent +received):\n%s", diff)
		}
		if n := len(rec.Started()); n != 0 {
			t.Errorf("the unsampled call started %d spans, want 0", n)
		}
	})

	t.Run("http", func(t *testing.T) {
		var mu sync.Mutex
		got := map[string]string{}
		lastAddr, _ := startHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			defer mu.Unlock()
			for k := range w3c {
				if v := r.Header.Get(k); v != "" {
					got[k] = v
				}
			}
		}), mesh.WithIdentity(devSource(t, ca, "/registry")), mesh.WithoutTelemetry())
		next := httpClient(t, mesh.WithIdentity(devSource(t, ca, "/trading")), traced, mesh.WithHTTPTarget("registry.mesh", "static:///"+lastAddr))
		middleAddr, _ := startHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			req, _ := http.NewRequestWithContext(r.Context(), http.MethodGet, "http://registry.mesh/certs", nil)
			resp, err := next.Do(req)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}), mesh.WithIdentity(devSource(t, ca, "/trading")), traced)
		client := httpClient(t, mesh.WithIdentity(devSource(t, ca, "/gateway")), mesh.WithoutTelemetry(),
			mesh.WithHTTPTarget("trading.mesh", "static:///"+middleAddr))

		req, _ := http.NewRequestWithContext(callTimeout(t), http.MethodGet, "http://trading.mesh/certs", nil)
		for k, v := range w3c {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
		mu.Lock()
		defer mu.Unlock()
		if diff := cmp.Diff(w3c, got); diff != "" {
			t.Errorf("W3C context at the last hop (-sent +received):\n%s", diff)
		}
		if n := len(rec.Started()); n != 0 {
			t.Errorf("the unsampled request started %d spans, want 0", n)
		}
	})
}
