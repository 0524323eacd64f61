package meshtel

import (
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// The globals as the otel package starts them: delegating no-ops.
var (
	initialTracerProvider = otel.GetTracerProvider()
	initialMeterProvider  = otel.GetMeterProvider()
)

// TracerProvider returns tp, or the global one when nil, or nil when that
// is a no-op: nothing recorded through it could reach an exporter.
func TracerProvider(tp trace.TracerProvider) trace.TracerProvider {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	switch tp.(type) {
	case tracenoop.TracerProvider, *tracenoop.TracerProvider:
		return nil
	}
	if tp == initialTracerProvider { // a pointer: == cannot panic
		return nil
	}
	return tp
}

// MeterProvider is TracerProvider for metrics.
func MeterProvider(mp metric.MeterProvider) metric.MeterProvider {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	switch mp.(type) {
	case metricnoop.MeterProvider, *metricnoop.MeterProvider:
		return nil
	}
	if mp == initialMeterProvider {
		return nil
	}
	return mp
}
