package main

import (
	"context"
	"time"

	"google.golang.org/grpc"

	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
	"github.com/gridmesh/gridmesh/telemetry"
)

// telemetryOn sets up OTel (OTLP traces through a batch span processor, and
// OTLP metrics) and returns the server options that install the otelgrpc
// stats handler and the mesh metrics interceptors.
//
// The mesh does not install these itself yet (mesh.NewServer at this
// commit has no telemetry), so they are added here with the telemetry
// package's own constructors, the way the mesh is to wire them.
func telemetryOn(ctx context.Context, service string, src security.Source) ([]mesh.ServerOption, func(), error) {
	p, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: service, Traces: "otlp", Metrics: "otlp"})
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
	unary, stream := telemetry.ServerInterceptors(telemetry.NewMetrics(p.MeterProvider), self.String())
	return []mesh.ServerOption{mesh.WithGRPCServerOptions(
		grpc.StatsHandler(telemetry.ServerHandler(p.TracerProvider, p.MeterProvider)),
		grpc.ChainUnaryInterceptor(unary),
		grpc.ChainStreamInterceptor(stream),
	)}, shutdown, nil
}
