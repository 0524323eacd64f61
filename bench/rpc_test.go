package bench_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/gridmesh/gridmesh/bench/internal/echo"
	"github.com/gridmesh/gridmesh/bench/internal/pki"
	"github.com/gridmesh/gridmesh/internal/meshtel"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
	"github.com/gridmesh/gridmesh/telemetry"
)

var td = spiffeid.RequireTrustDomainFromString("bench.gridmesh.dev")

// setups are the call paths BenchmarkUnary and BenchmarkUnaryParallel
// compare.
var setups = []struct {
	name  string
	start func(b *testing.B) testgrpc.TestServiceClient
}{
	{"plaintext", startPlain},
	{"tls", startTLS},
	{"mesh", meshWith(false, false)},
	{"mesh+resilience", meshWith(true, false)},
	{"mesh+noop-otel", meshNoopOTel},
	{"mesh-defaults", meshDefaults},
	{"mesh+otel", meshWith(false, true)},
	{"mesh+resilience+otel", meshWith(true, true)},
	{"mesh+resilience+setup", meshSetup(1)},
	{"mesh+resilience+setup-1pct", meshSetup(0.01)},
}

// BenchmarkUnary measures one unary call at a time through client and
// server in one process over loopback TCP, so allocs/op and B/op are the
// whole call path of both sides: plaintext and static TLS 1.3 grpc-go as
// baselines, then the mesh (mTLS from a dev CA source, per-call
// authorization) with its parts added one by one. cpu-ns/op is the
// process's user+system CPU time per call, which a busy machine disturbs
// less than ns/op.
func BenchmarkUnary(b *testing.B) { benchUnary(b, 1) }

// BenchmarkUnaryParallel is BenchmarkUnary with 32 callers per CPU in
// flight, where the mesh's per-call state meets concurrency.
func BenchmarkUnaryParallel(b *testing.B) { benchUnary(b, 32) }

func benchUnary(b *testing.B, parallelism int) {
	for _, s := range setups {
		for _, size := range []int{100, 1024} {
			b.Run(fmt.Sprintf("%s/%dB", s.name, size), func(b *testing.B) {
				client := s.start(b)
				req := echo.Request(size)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				defer cancel()
				if _, err := client.UnaryCall(ctx, req); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				cpu0 := cpuTime(b)
				if parallelism == 1 {
					for b.Loop() {
						if _, err := client.UnaryCall(ctx, req); err != nil {
							b.Fatal(err)
						}
					}
				} else {
					b.SetParallelism(parallelism)
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							if _, err := client.UnaryCall(ctx, req); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
			})
		}
	}
}

// cpuTime is the user+system CPU time of the whole process so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func serve(b *testing.B, srv *grpc.Server) string {
	b.Helper()
	testgrpc.RegisterTestServiceServer(srv, echo.Service{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { srv.Serve(lis); close(done) }()
	b.Cleanup(func() { srv.Stop(); <-done })
	return lis.Addr().String()
}

func client(b *testing.B, addr string, opts ...grpc.DialOption) testgrpc.TestServiceClient {
	b.Helper()
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return testgrpc.NewTestServiceClient(conn)
}

func startPlain(b *testing.B) testgrpc.TestServiceClient {
	addr := serve(b, grpc.NewServer())
	return client(b, addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

func startTLS(b *testing.B) testgrpc.TestServiceClient {
	m, err := pki.New()
	if err != nil {
		b.Fatal(err)
	}
	scfg, err := m.ServerConfig()
	if err != nil {
		b.Fatal(err)
	}
	addr := serve(b, grpc.NewServer(grpc.Creds(credentials.NewTLS(scfg))))
	return client(b, addr, grpc.WithTransportCredentials(credentials.NewTLS(m.ClientConfig())))
}

// meshWith returns a setup for a mesh server and client: mTLS only
// (mesh.WithoutTelemetry, mesh.WithoutResilience), then with the default
// resilience policy that mesh.Dial applies, and with the mesh's default
// OTel handlers on SDK providers (a batch span processor, in-memory
// metrics).
func meshWith(res, otel bool) func(b *testing.B) testgrpc.TestServiceClient {
	return func(b *testing.B) testgrpc.TestServiceClient {
		tel := []mesh.Option{mesh.WithoutTelemetry()}
		if otel {
			tp, mp := otelProviders(b)
			tel = []mesh.Option{mesh.WithTracerProvider(tp), mesh.WithMeterProvider(mp)}
		}
		var dopts []mesh.DialOption
		if !res {
			dopts = append(dopts, mesh.WithoutResilience())
		}
		return startMesh(b, tel, dopts)
	}
}

// meshSetup returns a setup for a mesh server and client with the default
// resilience policy and the providers telemetry.Setup builds, as the
// c-full (ratio 1) and c-full-1pct (ratio 0.01) scenarios of the bench
// harness have them, except that spans go to the console exporter writing
// to io.Discard instead of OTLP (JSON encoding in the batch processor's
// goroutine, counted in cpu-ns/op).
func meshSetup(ratio float64) func(b *testing.B) testgrpc.TestServiceClient {
	return func(b *testing.B) testgrpc.TestServiceClient {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		p, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: "bench", Traces: "console", Stdout: io.Discard,
			SampleRatio: ratio, NoGlobal: true})
		if err != nil {
			b.Fatal(err)
		}
		mp, _, stop := meshtel.NewManualProvider() // collects the mesh's call metrics
		shutdownAtCleanup(b, p.Shutdown, stop)
		return startMesh(b, []mesh.Option{mesh.WithTracerProvider(p.TracerProvider), mesh.WithMeterProvider(mp)}, nil)
	}
}

// meshNoopOTel is the mesh's telemetry as shipped to a service that never
// sets OTel up: on the no-op global providers the mesh installs no
// telemetry (resilience off, to isolate it).
func meshNoopOTel(b *testing.B) testgrpc.TestServiceClient {
	return startMesh(b, nil, []mesh.DialOption{mesh.WithoutResilience()})
}

// meshDefaults is mesh.NewServer and mesh.Dial with nothing but an
// identity: default resilience, default telemetry on no-op providers.
func meshDefaults(b *testing.B) testgrpc.TestServiceClient {
	return startMesh(b, nil, nil)
}

// otelProviders returns SDK providers: traces through a batch span
// processor to an exporter that drops them, metrics aggregated in memory.
func otelProviders(b *testing.B) (*sdktrace.TracerProvider, metric.MeterProvider) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discard{}))
	mp, _, stop := meshtel.NewManualProvider() // collects the mesh's call metrics
	shutdownAtCleanup(b, tp.Shutdown, stop)
	return tp, mp
}

// shutdownAtCleanup has shutdown (given 5 s) and then stop run when b ends.
func shutdownAtCleanup(b *testing.B, shutdown func(context.Context) error, stop func()) {
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = shutdown(ctx) // spans still queued are dropped
		stop()
	})
}

type discard struct{}

func (discard) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discard) Shutdown(context.Context) error                             { return nil }

func startMesh(b *testing.B, tel []mesh.Option, dopts []mesh.DialOption) testgrpc.TestServiceClient {
	b.Helper()
	ca, err := security.NewDevCA(td, security.DevCAConfig{})
	if err != nil {
		b.Fatal(err)
	}
	source := func(path string) *security.DevSource {
		src, err := ca.Source(spiffeid.RequireFromPath(td, path))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { src.Close() })
		return src
	}
	sopts := []mesh.ServerOption{mesh.WithIdentity(source("/server"))}
	for _, o := range tel {
		sopts = append(sopts, o)
	}
	srv, err := mesh.NewServer(sopts...)
	if err != nil {
		b.Fatal(err)
	}
	testgrpc.RegisterTestServiceServer(srv, echo.Service{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, lis); close(done) }()
	b.Cleanup(func() { cancel(); srv.Close(); <-done })
	copts := append([]mesh.DialOption{mesh.WithIdentity(source("/client"))}, dopts...)
	for _, o := range tel {
		copts = append(copts, o)
	}
	conn, err := mesh.Dial(ctx, lis.Addr().String(), copts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return testgrpc.NewTestServiceClient(conn)
}
