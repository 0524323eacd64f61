// Package otelmode sets up OpenTelemetry for the benchmark processes as the
// -telemetry flag says.
package otelmode

import (
	"context"
	"fmt"
	"time"

	"github.com/gridmesh/gridmesh/telemetry"
)

// Setup applies mode and reports whether the mesh must be built with
// mesh.WithoutTelemetry, with a shutdown that flushes what Setup built:
//
//	off    mesh.WithoutTelemetry(): no telemetry interceptors at all
//	noop   the mesh's default handlers with OTel not set up (no-op globals),
//	       what a service gets that never calls telemetry.Setup
//	otlp   telemetry.Setup exporting traces (batch span processor) and
//	       metrics over OTLP/gRPC to OTEL_EXPORTER_OTLP_ENDPOINT; the mesh's
//	       default handlers use the globals it installs; sample, when in
//	       (0,1), is the fraction of traces sampled (telemetry.Config.SampleRatio)
func Setup(ctx context.Context, mode, service string, sample float64) (off bool, shutdown func(), err error) {
	switch mode {
	case "off":
		return true, func() {}, nil
	case "noop":
		return false, func() {}, nil
	case "otlp":
		p, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: service, Traces: "otlp", Metrics: "otlp", SampleRatio: sample})
		if err != nil {
			return false, nil, err
		}
		return false, func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			p.Shutdown(ctx)
		}, nil
	default:
		return false, nil, fmt.Errorf("-telemetry must be off, noop or otlp, not %q", mode)
	}
}
