package meshtel

import (
	"context"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
	estats "google.golang.org/grpc/experimental/stats"
)

// XDSClientMetrics are the metrics grpc-go's xDS client reports: accepted
// and refused resource updates, control plane failures, whether it is
// connected, and the resources it holds.
var XDSClientMetrics = []string{
	"grpc.xds_client.resource_updates_valid", "grpc.xds_client.resource_updates_invalid",
	"grpc.xds_client.server_failure", "grpc.xds_client.connected", "grpc.xds_client.resources",
}

// GRPCMetrics records grpc-go's registered (non-per-call) metrics, such as
// its xDS client's, on an OpenTelemetry meter, under the names, units,
// descriptions and labels grpc-go's stats/opentelemetry plugin gives them
// (scope "grpc-go"). Unlike that plugin it is not a stats handler: give it
// to the component that reports them (for the xDS client, the xds
// resolver's resolver.BuildOptions.MetricsRecorder), and calls on the
// channel pay nothing for it. It records counters and asynchronous
// gauges, the kinds grpc-go's xDS client reports; measurements of other
// metrics are dropped. Safe for concurrent use.
type GRPCMetrics struct {
	estats.UnimplementedMetricsRecorder
	meter  metric.Meter
	counts map[*estats.MetricDescriptor]metric.Int64Counter
	gauges map[*estats.MetricDescriptor]metric.Int64ObservableGauge
}

// NewGRPCMetrics returns a GRPCMetrics recording the metrics grpc-go
// registered under names (XDSClientMetrics, for one) on mp. Names grpc-go
// did not register, which happens when the component that registers them
// is not linked in, are left out.
func NewGRPCMetrics(mp metric.MeterProvider, names ...string) *GRPCMetrics {
	m := &GRPCMetrics{
		meter:  mp.Meter("grpc-go", metric.WithInstrumentationVersion(grpc.Version)),
		counts: map[*estats.MetricDescriptor]metric.Int64Counter{},
		gauges: map[*estats.MetricDescriptor]metric.Int64ObservableGauge{},
	}
	for _, name := range names {
		d := estats.DescriptorForMetric(estats.Metric(name))
		if d == nil {
			continue
		}
		// Instrument constructors fail only on invalid names; grpc-go's
		// are valid, and a no-op instrument comes back beside any error.
		switch d.Type {
		case estats.MetricTypeIntCount:
			m.counts[d], _ = m.meter.Int64Counter(d.Name, metric.WithUnit(d.Unit), metric.WithDescription(d.Description))
		case estats.MetricTypeIntAsyncGauge:
			m.gauges[d], _ = m.meter.Int64ObservableGauge(d.Name, metric.WithUnit(d.Unit), metric.WithDescription(d.Description))
		}
	}
	return m
}

// labels are a measurement's attributes: the descriptor's required labels
// (optional ones are not recorded, as the plugin does by default).
func labels(d *estats.MetricDescriptor, vals []string) metric.MeasurementOption {
	kvs := make([]attribute.KeyValue, 0, len(d.Labels))
	for i, k := range d.Labels {
		if i < len(vals) {
			kvs = append(kvs, attribute.String(k, vals[i]))
		}
	}
	return metric.WithAttributeSet(attribute.NewSet(kvs...))
}

// RecordInt64Count adds incr to the counter of handle.
func (m *GRPCMetrics) RecordInt64Count(handle *estats.Int64CountHandle, incr int64, vals ...string) {
	d := handle.Descriptor()
	if c, ok := m.counts[d]; ok {
		c.Add(context.Background(), incr, labels(d, vals))
	}
}

// RegisterAsyncReporter has reporter report the gauges among metrics each
// time metrics are collected, until the returned func is called.
func (m *GRPCMetrics) RegisterAsyncReporter(reporter estats.AsyncMetricReporter, metrics ...estats.AsyncMetric) func() {
	gauges := map[*estats.MetricDescriptor]metric.Int64ObservableGauge{}
	var observables []metric.Observable
	for _, am := range metrics {
		if g, ok := m.gauges[am.Descriptor()]; ok {
			gauges[am.Descriptor()] = g
			observables = append(observables, g)
		}
	}
	if len(observables) == 0 {
		return func() {}
	}
	reg, err := m.meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		return reporter.Report(gaugeObserver{gauges: gauges, o: o})
	}, observables...)
	if err != nil {
		return func() {}
	}
	var once sync.Once
	return func() { once.Do(func() { _ = reg.Unregister() }) }
}

type gaugeObserver struct {
	gauges map[*estats.MetricDescriptor]metric.Int64ObservableGauge
	o      metric.Observer
}

func (g gaugeObserver) RecordInt64AsyncGauge(handle *estats.Int64AsyncGaugeHandle, v int64, vals ...string) {
	d := handle.Descriptor()
	if gauge, ok := g.gauges[d]; ok {
		g.o.ObserveInt64(gauge, v, labels(d, vals))
	}
}
