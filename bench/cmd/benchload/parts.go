package main

import (
	"context"
	"time"

	"google.golang.org/grpc"

	"github.com/gridmesh/gridmesh/resilience"
	"github.com/gridmesh/gridmesh/security"
	"github.com/gridmesh/gridmesh/telemetry"
)

// The mesh does not apply these parts itself yet (mesh.Dial at this commit
// adds only mTLS), so they are added here with the packages' own
// constructors, in the order the mesh is to chain them: telemetry
// outermost, so a call and its retries are one record, then resilience.

// resilienceOn returns dial options applying resilience.Default() to every
// call, with grpc-go's own retries off as the resilience package asks.
func resilienceOn() ([]grpc.DialOption, error) {
	rc, err := resilience.NewClient(resilience.DefaultConfig())
	if err != nil {
		return nil, err
	}
	return []grpc.DialOption{
		grpc.WithDisableRetry(),
		grpc.WithChainUnaryInterceptor(rc.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(rc.StreamClientInterceptor()),
	}, nil
}

// telemetryOn sets up OTel (OTLP traces through a batch span processor,
// and OTLP metrics, to OTEL_EXPORTER_OTLP_ENDPOINT) and returns the dial
// options with the otelgrpc stats handler and the mesh metrics
// interceptors, and a shutdown that flushes the exporters.
func telemetryOn(ctx context.Context, src security.Source, target string) ([]grpc.DialOption, func(), error) {
	p, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: "bench-load", Traces: "otlp", Metrics: "otlp"})
	if err != nil {
		return nil, nil, err
	}
	shutdown := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.Shutdown(ctx)
	}
	self, err := security.ID(src)
	if err != nil {
		shutdown()
		return nil, nil, err
	}
	unary, stream := telemetry.ClientInterceptors(telemetry.NewMetrics(p.MeterProvider), self.String(), target)
	return []grpc.DialOption{
		grpc.WithStatsHandler(telemetry.ClientHandler(p.TracerProvider, p.MeterProvider)),
		grpc.WithChainUnaryInterceptor(unary),
		grpc.WithChainStreamInterceptor(stream),
	}, shutdown, nil
}
