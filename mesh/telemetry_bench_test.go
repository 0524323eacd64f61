package mesh_test

import (
	"context"
	"slices"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/gridmesh/gridmesh/internal/meshtel"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

// BenchmarkMetricsOverhead measures what the golden metrics cost per call:
// a unary call (100 B each way) through a mesh client and server in this
// process, with metrics on (an SDK MeterProvider collecting the mesh's
// aggregates, no tracing) against the same call with mesh.WithoutTelemetry,
// interleaved in the same run, 100 calls of each per iteration in
// alternating order. It reports the medians of the per-iteration
// differences in wall time and CPU time (user+system of the process,
// client and server together) per call, the extra allocations per call,
// and the wall-time ratio.
// Target: at most 10 allocations and 2µs of CPU per call.
//
//	go test -run '^$' -bench MetricsOverhead -benchtime 20x ./mesh
func BenchmarkMetricsOverhead(b *testing.B) {
	ca := newDevCABench(b)
	mp, _, stop := meshtel.NewManualProvider()
	b.Cleanup(stop)
	variants := [][]mesh.Option{{mesh.WithoutTelemetry()}, {mesh.WithMeterProvider(mp)}}
	clients := make([]testgrpc.TestServiceClient, len(variants))
	for i, opts := range variants {
		clients[i] = benchPair(b, ca, opts)
	}
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 100)}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	call := func(c testgrpc.TestServiceClient) {
		if _, err := c.UnaryCall(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	for _, c := range clients { // warm up connections and series
		for range 100 {
			call(c)
		}
	}
	// Paired batches, in alternating order so drift and the other load on
	// the machine fall on both alike; the medians of the per-pair
	// differences are reported.
	const batch = 100
	var wall, cpu [2][]float64
	var dWall, dCPU []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var w, c [2]float64
		for k := range 2 {
			j := (i + k) % 2
			t0, c0 := time.Now(), cpuTime()
			for range batch {
				call(clients[j])
			}
			w[j] = float64(time.Since(t0).Nanoseconds()) / batch
			c[j] = float64((cpuTime() - c0).Nanoseconds()) / batch
		}
		for j := range 2 {
			wall[j] = append(wall[j], w[j])
			cpu[j] = append(cpu[j], c[j])
		}
		dWall, dCPU = append(dWall, w[1]-w[0]), append(dCPU, c[1]-c[0])
	}
	b.StopTimer()
	allocs := make([]float64, len(clients))
	for j, c := range clients {
		allocs[j] = testing.AllocsPerRun(500, func() { call(c) })
	}
	b.ReportMetric(median(wall[0]), "off-ns/call")
	b.ReportMetric(median(wall[1]), "metrics-ns/call")
	b.ReportMetric(median(dWall), "extra-ns/call")
	b.ReportMetric(median(cpu[0]), "off-cpu-ns/call")
	b.ReportMetric(median(dCPU), "extra-cpu-ns/call")
	b.ReportMetric(median(wall[1])/median(wall[0]), "metrics/off")
	b.ReportMetric(allocs[1]-allocs[0], "extra-allocs/call")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// benchPair starts a mesh server with an echoService and dials it, both
// with opts, until the benchmark ends.
func benchPair(b *testing.B, ca *security.DevCA, opts []mesh.Option) testgrpc.TestServiceClient {
	b.Helper()
	srcS, err := ca.Source(id("/server"))
	if err != nil {
		b.Fatal(err)
	}
	srcC, err := ca.Source(id("/client"))
	if err != nil {
		b.Fatal(err)
	}
	var sopts []mesh.ServerOption
	var dopts []mesh.DialOption
	for _, o := range opts {
		sopts, dopts = append(sopts, o), append(dopts, o)
	}
	srv, err := mesh.NewServer(append(sopts, mesh.WithIdentity(srcS))...)
	if err != nil {
		b.Fatal(err)
	}
	testgrpc.RegisterTestServiceServer(srv, &echoService{})
	lis := listenBench(b)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	cc, err := mesh.Dial(ctx, lis.Addr().String(), append(dopts, mesh.WithIdentity(srcC))...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cc.Close()
		cancel()
		srv.Close()
		<-done
		srcC.Close()
		srcS.Close()
	})
	return testgrpc.NewTestServiceClient(cc)
}

// BenchmarkXDSUnaryCall is a unary call (100 B each way) over an
// xds:/// channel through a meshd in this process, with telemetry off
// and with metrics on (an SDK MeterProvider: the mesh's call metrics and
// grpc-go's xDS client metrics), each one call at a time. What metrics
// add per call is the difference between the two.
//
//	go test -run '^$' -bench XDSUnaryCall -benchmem -count 6 ./mesh
func BenchmarkXDSUnaryCall(b *testing.B) {
	meshd, ca := startXDSTrading(b)
	mp, _, stop := meshtel.NewManualProvider()
	b.Cleanup(stop)
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 100)}}
	for _, v := range []struct {
		name string
		opt  mesh.Option
	}{{"telemetry-off", mesh.WithoutTelemetry()}, {"metrics", mesh.WithMeterProvider(mp)}} {
		b.Run(v.name, func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			cc, err := mesh.Dial(ctx, "xds:///trading", mesh.WithIdentity(devSource(b, ca, "/gateway")),
				mesh.WithControlPlane(meshd.Addr), v.opt)
			if err != nil {
				b.Fatal(err)
			}
			defer cc.Close()
			client := testgrpc.NewTestServiceClient(cc)
			if _, err := client.UnaryCall(ctx, req, grpc.WaitForReady(true)); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := client.UnaryCall(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
