// Package telemetrybench shows what the mesh's telemetry costs per call:
// off (the default: no-op global providers, so the mesh installs no
// telemetry) and on (SDK providers), each against the mesh
// without any telemetry (mesh.WithoutTelemetry) measured in the same run.
//
//	go test -run '^$' -bench . -benchmem ./bench/telemetry
package telemetrybench_test

import (
	"context"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.uber.org/goleak"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/gridmesh/gridmesh/bench/internal/echo"
	"github.com/gridmesh/gridmesh/internal/meshtel"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var td = spiffeid.RequireTrustDomainFromString("bench.gridmesh.dev")

type variant struct {
	name string
	opts func(tb testing.TB) []mesh.Option
}

var variants = []variant{
	// baseline: no telemetry interceptor.
	{"plain", func(testing.TB) []mesh.Option { return []mesh.Option{mesh.WithoutTelemetry()} }},
	// the default: global providers are no-ops, nothing installed.
	{"off", func(testing.TB) []mesh.Option { return nil }},
	// SDK providers: every span through a batch processor to a discarding
	// exporter, metrics aggregated in memory.
	{"on", func(tb testing.TB) []mesh.Option {
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discard{}))
		mp, _, stop := meshtel.NewManualProvider() // collects the mesh's call metrics
		tb.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			tp.Shutdown(ctx)
			stop()
		})
		return []mesh.Option{mesh.WithTracerProvider(tp), mesh.WithMeterProvider(mp)}
	}},
}

// BenchmarkUnary is one unary call (100 B each way) through a mesh client
// and server in this process over loopback mTLS, per variant.
func BenchmarkUnary(b *testing.B) {
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			client := start(b, v.opts(b))
			runCalls(b, client)
		})
	}
}

// BenchmarkOffMeansOff measures the three variants interleaved, 300
// calls each per iteration (run it with -benchtime=20x or more), and
// reports the median per-call cost of "off" and "on" relative to "plain"
// from the same iterations, and their extra allocations per call: off/plain
// is what telemetry costs when nobody turned it on, on/plain what it costs
// with SDK providers. Its own ns/op is the time of one iteration.
func BenchmarkOffMeansOff(b *testing.B) {
	clients := make([]testgrpc.TestServiceClient, len(variants))
	for i, v := range variants {
		clients[i] = start(b, v.opts(b))
	}
	req := echo.Request(100)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	call := func(c testgrpc.TestServiceClient) {
		if _, err := c.UnaryCall(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	for _, c := range clients { // warm up connections
		call(c)
	}
	const calls = 300
	ratios := make([][]float64, len(variants))
	var plain []float64
	for b.Loop() {
		per := make([]float64, len(variants))
		for i, c := range clients {
			start := time.Now()
			for range calls {
				call(c)
			}
			per[i] = float64(time.Since(start).Nanoseconds()) / calls
		}
		plain = append(plain, per[0])
		for i := range variants {
			ratios[i] = append(ratios[i], per[i]/per[0])
		}
	}
	b.ReportMetric(median(plain), "plain-ns/call")
	plainAllocs := testing.AllocsPerRun(200, func() { call(clients[0]) })
	for i, v := range variants[1:] {
		b.ReportMetric(median(ratios[i+1]), v.name+"/plain")
		b.ReportMetric(testing.AllocsPerRun(200, func() { call(clients[i+1]) })-plainAllocs, v.name+"-extra-allocs/call")
	}
}

func runCalls(b *testing.B, client testgrpc.TestServiceClient) {
	req := echo.Request(100)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := client.UnaryCall(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

type discard struct{}

func (discard) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discard) Shutdown(context.Context) error                             { return nil }

func start(b *testing.B, opts []mesh.Option) testgrpc.TestServiceClient {
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
	copts := []mesh.DialOption{mesh.WithIdentity(source("/client"))}
	for _, o := range opts {
		sopts, copts = append(sopts, o), append(copts, o)
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
	conn, err := mesh.Dial(ctx, lis.Addr().String(), copts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return testgrpc.NewTestServiceClient(conn)
}
