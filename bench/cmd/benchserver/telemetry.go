package main

import (
	"context"

	"github.com/gridmesh/gridmesh/bench/internal/otelmode"
	"github.com/gridmesh/gridmesh/mesh"
)

// telemetryMode returns the server options for -telemetry (see otelmode.Setup).
func telemetryMode(ctx context.Context, mode, service string, sample float64) ([]mesh.ServerOption, func(), error) {
	off, shutdown, err := otelmode.Setup(ctx, mode, service, sample)
	if off {
		return []mesh.ServerOption{mesh.WithoutTelemetry()}, shutdown, err
	}
	return nil, shutdown, err
}
