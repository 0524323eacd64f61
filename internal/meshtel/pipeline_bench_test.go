package meshtel_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"syscall"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/gridmesh/gridmesh/internal/meshtel"
)

// pipelines returns a server's and a client's pipeline for a variant:
// "metrics" records into a Hub, "passthrough" only passes W3C context on,
// "metrics+1pct" and "metrics+traced" also trace, 1% of new traces or all
// of them, through the SDK provider telemetry.Setup builds (batch span
// processor, to an exporter that drops the spans).
func pipelines(b *testing.B, variant string) (server, client *meshtel.Pipeline) {
	var hub *meshtel.Hub
	if variant != "passthrough" {
		hub = meshtel.NewHub()
	}
	var tr *meshtel.Tracing
	if ratio, ok := map[string]float64{"metrics+1pct": 0.01, "metrics+traced": 1}[variant]; ok {
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discardSpans{}), sdktrace.WithSampler(meshtel.SDKSampler(ratio, true)),
			sdktrace.WithIDGenerator(meshtel.IDGenerator()))
		b.Cleanup(func() { tp.Shutdown(context.Background()) })
		tr = meshtel.NewTracing(rootRatio{tp, ratio, true})
	}
	return &meshtel.Pipeline{Hub: hub, Tracing: tr, Self: "spiffe://example.org/server"},
		&meshtel.Pipeline{Hub: hub, Tracing: tr, Self: "spiffe://example.org/client"}
}

type discardSpans struct{}

func (discardSpans) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardSpans) Shutdown(context.Context) error                             { return nil }

// BenchmarkPipelineGRPC is the CPU the golden metrics add to one unary
// call, both sides: the server, client-call and client-attempt
// interceptors around a handler and an invoker that do nothing (the
// invoker reports a verified peer, as grpc-go does), with metrics on and
// no tracing ("metrics"), against the same chain with the pipeline only
// passing W3C context on ("passthrough", what telemetry off with no-op
// providers installs), and with tracing too ("metrics+1pct",
// "metrics+traced"; the W3C context goes from the client's outgoing
// metadata to the server's incoming, as grpc-go sends it). The mesh call itself costs the same either way;
// see mesh's BenchmarkMetricsOverhead for it end to end. cpu-ns/op is the
// process's CPU time per call, which other load on the machine does not
// inflate as it does ns/op.
func BenchmarkPipelineGRPC(b *testing.B) {
	server := &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}, AuthInfo: credentials.TLSInfo{
		SPIFFEID: &url.URL{Scheme: "spiffe", Host: "example.org", Path: "/client"}}}
	client := &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2}, AuthInfo: credentials.TLSInfo{
		SPIFFEID: &url.URL{Scheme: "spiffe", Host: "example.org", Path: "/server"}}}
	for _, name := range []string{"passthrough", "metrics", "metrics+1pct", "metrics+traced"} {
		b.Run(name, func(b *testing.B) {
			sp, cp := pipelines(b, name)
			srvUnary, _ := sp.ServerInterceptors()
			callUnary, _ := cp.ClientInterceptors("static:///trading")
			attemptUnary, _ := cp.AttemptInterceptors("static:///trading")
			sctx := peer.NewContext(context.Background(), server)
			info := &grpc.UnaryServerInfo{FullMethod: "/rec.Trading/Buy"}
			handler := func(context.Context, any) (any, error) { return nil, nil }
			invoker := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
				for _, o := range opts {
					if po, ok := o.(grpc.PeerCallOption); ok {
						*po.PeerAddr = *client
					}
				}
				in := sctx
				if md, ok := metadata.FromOutgoingContext(ctx); ok {
					in = metadata.NewIncomingContext(sctx, md)
				}
				_, err := srvUnary(in, req, info, handler)
				return err
			}
			attempt := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
				return attemptUnary(ctx, method, req, reply, cc, invoker, opts...)
			}
			ctx := context.Background()
			opts := []grpc.CallOption{grpc.StaticMethod()}
			b.ReportAllocs()
			b.ResetTimer()
			c0 := cpuTime()
			for i := 0; i < b.N; i++ {
				if err := callUnary(ctx, "/rec.Trading/Buy", nil, nil, nil, attempt, opts...); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(cpuTime()-c0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// BenchmarkPipelineHTTP is BenchmarkPipelineGRPC for HTTP: the server
// handler, client-call and client-attempt stages around a handler that
// writes 200 and a transport that serves the request in process.
func BenchmarkPipelineHTTP(b *testing.B) {
	for _, name := range []string{"passthrough", "metrics", "metrics+1pct", "metrics+traced"} {
		b.Run(name, func(b *testing.B) {
			sp, cp := pipelines(b, name)
			mux := http.NewServeMux()
			mux.HandleFunc("GET /v1/trades/{id}", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
			server := sp.HTTPHandler(mux)
			rec := &discardWriter{h: http.Header{}}
			inner := roundTripFunc(func(r *http.Request) (*http.Response, error) {
				server.ServeHTTP(rec, r)
				return &http.Response{StatusCode: http.StatusOK, Request: r}, nil
			})
			rt := cp.HTTPCalls("trading.mesh", cp.HTTPAttempts("trading.mesh", inner))
			req := httptest.NewRequest(http.MethodGet, "http://trading.mesh/v1/trades/42", nil)
			b.ReportAllocs()
			b.ResetTimer()
			c0 := cpuTime()
			for i := 0; i < b.N; i++ {
				if _, err := rt.RoundTrip(req); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(cpuTime()-c0)/float64(b.N), "cpu-ns/op")
		})
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(int)             {}

// cpuTime is the process's user and system CPU time: what a benchmark
// reports beside wall time, which the machine's other load inflates.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkSpanIDs starts and ends a sampled root span from 32 goroutines
// per CPU on an SDK provider (batch processor, spans dropped) with the
// SDK's default ID generator, which takes a mutex per span, and with
// meshtel.IDGenerator, which telemetry.Setup installs.
func BenchmarkSpanIDs(b *testing.B) {
	for _, v := range []struct {
		name string
		opts []sdktrace.TracerProviderOption
	}{
		{"sdk-default", nil},
		{"meshtel", []sdktrace.TracerProviderOption{sdktrace.WithIDGenerator(meshtel.IDGenerator())}},
	} {
		b.Run(v.name, func(b *testing.B) {
			tp := sdktrace.NewTracerProvider(append(v.opts, sdktrace.WithBatcher(discardSpans{}))...)
			b.Cleanup(func() { tp.Shutdown(context.Background()) })
			tracer := tp.Tracer("bench")
			b.ReportAllocs()
			b.SetParallelism(32)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					_, span := tracer.Start(context.Background(), "call")
					span.End()
				}
			})
		})
	}
}
