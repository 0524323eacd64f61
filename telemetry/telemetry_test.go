package telemetry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.uber.org/goleak"

	"github.com/gridmesh/gridmesh/telemetry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func timeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestFromEnv(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want telemetry.Config
	}{
		{"nothing set is off", nil, telemetry.Config{}},
		{"otlp over http", map[string]string{
			"OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "otlp",
			"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_SERVICE_NAME": "trading",
		}, telemetry.Config{ServiceName: "trading", Traces: "otlp", Metrics: "otlp", TracesProtocol: "http/protobuf", MetricsProtocol: "http/protobuf"}},
		{"per-signal protocol wins", map[string]string{
			"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
			"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
		}, telemetry.Config{Traces: "otlp", TracesProtocol: "grpc", MetricsProtocol: "http/protobuf"}},
		{"sdk disabled wins", map[string]string{
			"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "console",
		}, telemetry.Config{Traces: "none", Metrics: "none"}},
		{"prometheus address and ratio sampler", map[string]string{
			"OTEL_METRICS_EXPORTER": "prometheus", "OTEL_EXPORTER_PROMETHEUS_PORT": "9999",
			"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25",
			"OTEL_METRIC_EXPORT_INTERVAL": "5000",
		}, telemetry.Config{Metrics: "prometheus", PrometheusAddr: "localhost:9999", SampleRatio: 0.25, MetricInterval: 5 * time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{"OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME", "OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER",
				"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
				"OTEL_EXPORTER_PROMETHEUS_HOST", "OTEL_EXPORTER_PROMETHEUS_PORT", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
				"OTEL_METRIC_EXPORT_INTERVAL"} {
				t.Setenv(k, tc.env[k])
			}
			if diff := cmp.Diff(tc.want, telemetry.FromEnv(), cmp.Comparer(func(a, b io.Writer) bool { return a == b })); diff != "" {
				t.Errorf("FromEnv (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSetupRefusesUnknownValues(t *testing.T) {
	for _, tc := range []struct {
		cfg  telemetry.Config
		want string
	}{
		{telemetry.Config{Traces: "zipkin"}, `traces exporter "zipkin" is not supported: use "otlp", "console" or "none" (OTEL_TRACES_EXPORTER)`},
		{telemetry.Config{Metrics: "statsd"}, `metrics exporter "statsd" is not supported`},
		{telemetry.Config{Traces: "otlp", TracesProtocol: "thrift"}, `traces protocol "thrift" is not supported: use "grpc" or "http/protobuf"`},
		{telemetry.Config{Metrics: "otlp", MetricsProtocol: "udp"}, `metrics protocol "udp" is not supported`},
	} {
		t.Run(tc.want, func(t *testing.T) {
			tc.cfg.NoGlobal = true
			p, err := telemetry.Setup(timeout(t), tc.cfg)
			if err == nil {
				p.Shutdown(timeout(t))
				t.Fatal("Setup succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestSetupConsoleExportsSpansOnShutdown(t *testing.T) {
	var out bytes.Buffer
	p, err := telemetry.Setup(timeout(t), telemetry.Config{ServiceName: "svc", Traces: "console", Stdout: &out, NoGlobal: true})
	if err != nil {
		t.Fatal(err)
	}
	_, span := p.TracerProvider.Tracer("test").Start(context.Background(), "work")
	span.End()
	if err := p.Shutdown(timeout(t)); err != nil {
		t.Fatal(err)
	}
	if err := p.Shutdown(timeout(t)); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	var got struct {
		Name     string
		Resource []struct{ Key string }
	}
	if err := json.NewDecoder(&out).Decode(&got); err != nil {
		t.Fatalf("console output %q: %v", out.String(), err)
	}
	if got.Name != "work" {
		t.Errorf("span name %q, want work", got.Name)
	}
}

func TestSetupPrometheusServesMeshMetrics(t *testing.T) {
	p, err := telemetry.Setup(timeout(t), telemetry.Config{Metrics: "prometheus", PrometheusAddr: "127.0.0.1:0", NoGlobal: true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Shutdown(timeout(t))
	m := telemetry.NewMetrics(p.MeterProvider)
	m.AuthzDenied("rule no-guests", "spiffe://example.org/guest", "/pkg.S/M")

	req, _ := http.NewRequestWithContext(timeout(t), "GET", "http://"+p.PrometheusAddr()+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	want := `mesh_authz_denials_total{mesh_authz_rule="rule no-guests",mesh_source="spiffe://example.org/guest",otel_scope_name="github.com/gridmesh/gridmesh/telemetry"`
	if !strings.Contains(string(body), want) {
		t.Errorf("/metrics does not contain %s:\n%s", want, body)
	}
}

// TestEventCounters records a known number of each event and reads the
// counters back through a ManualReader, and the events through a sink.
func TestEventCounters(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	m := telemetry.NewMetrics(mp)
	var kinds []string
	remove := m.OnEvent(func(e telemetry.Event) { kinds = append(kinds, e.Kind) })

	const dest = "xds:///trading"
	for range 3 {
		m.RecordRetry(dest, "/rec.Trading/Buy", "UNAVAILABLE")
	}
	m.RecordHedge(dest, "/rec.Trading/Quote")
	m.RetryBudgetExhausted(dest, "/rec.Trading/Buy")
	m.BreakerStateChanged(dest, "closed", "open")
	m.BreakerStateChanged(dest, "open", "half-open")
	m.OutlierEjected(dest, "10.0.0.1:8443", true, "5 consecutive errors")
	m.OutlierEjected(dest, "10.0.0.1:8443", false, "")
	m.AuthzDenied("default deny", "spiffe://example.org/guest", "/rec.Trading/Buy")
	m.SVIDRotated("spiffe://example.org/trading", time.Unix(2000000000, 0))
	m.DiscoveryUpdate(dest, 3, nil)
	m.DiscoveryUpdate(dest, 0, errors.New("consul: connection refused"))
	m.XDSUpdate("xds:///trading", "type.googleapis.com/envoy.config.cluster.v3.Cluster", "7", false, "")
	m.XDSUpdate("xds:///trading", "type.googleapis.com/envoy.config.cluster.v3.Cluster", "8", true, "bad lb policy")
	m.UnsupportedField("xds", "xds:///trading", "Cluster trading", "cluster.dns_lookup_family")
	stop := m.ObserveSVID(func() (string, time.Time, bool) {
		return "spiffe://example.org/trading", time.Unix(2000000000, 0), true
	})
	defer stop()
	remove()
	m.RecordRetry(dest, "/rec.Trading/Buy", "after remove: counted, not sent to the sink")

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, sm := range rm.ScopeMetrics {
		for _, md := range sm.Metrics {
			switch d := md.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					got[md.Name+label(dp.Attributes)] += float64(dp.Value)
				}
			case metricdata.Gauge[int64]:
				for _, dp := range d.DataPoints {
					got[md.Name+label(dp.Attributes)] = float64(dp.Value)
				}
			case metricdata.Gauge[float64]:
				for _, dp := range d.DataPoints {
					got[md.Name+label(dp.Attributes)] = dp.Value
				}
			}
		}
	}
	want := map[string]float64{
		"mesh.retries{mesh.target=xds:///trading,rpc.method=/rec.Trading/Buy}":                                                4,
		"mesh.hedges{mesh.target=xds:///trading,rpc.method=/rec.Trading/Quote}":                                               1,
		"mesh.retry_budget.exhausted{mesh.target=xds:///trading}":                                                             1,
		"mesh.breaker.transitions{mesh.breaker.from=closed,mesh.breaker.state=open,mesh.target=xds:///trading}":               1,
		"mesh.breaker.transitions{mesh.breaker.from=open,mesh.breaker.state=half-open,mesh.target=xds:///trading}":            1,
		"mesh.outlier.ejections{mesh.endpoint=10.0.0.1:8443,mesh.target=xds:///trading}":                                      1,
		"mesh.authz.denials{mesh.authz.rule=default deny,mesh.source=spiffe://example.org/guest,rpc.method=/rec.Trading/Buy}": 1,
		"mesh.svid.rotations{mesh.source=spiffe://example.org/trading}":                                                       1,
		"mesh.svid.expiry{mesh.source=spiffe://example.org/trading}":                                                          2000000000,
		"mesh.discovery.updates{mesh.outcome=ok,mesh.target=xds:///trading}":                                                  1,
		"mesh.discovery.updates{mesh.outcome=error,mesh.target=xds:///trading}":                                               1,
		"mesh.discovery.endpoints{mesh.target=xds:///trading}":                                                                3,
		"mesh.xds.updates{mesh.outcome=ok,xds.type_url=type.googleapis.com/envoy.config.cluster.v3.Cluster}":                  1,
		"mesh.xds.updates{mesh.outcome=nack,xds.type_url=type.googleapis.com/envoy.config.cluster.v3.Cluster}":                1,
		"mesh.config.unsupported_fields{mesh.config.field=cluster.dns_lookup_family,mesh.config.source=xds}":                  1,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}
	wantKinds := []string{"retry", "retry", "retry", "hedge", "retry_budget_exhausted", "breaker", "breaker",
		"outlier_ejected", "outlier_unejected", "denied", "svid_rotated", "discovery_update", "discovery_update",
		"xds_update", "xds_update", "unsupported_field"}
	if diff := cmp.Diff(wantKinds, kinds); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

func label(s attribute.Set) string {
	var parts []string
	for _, kv := range s.ToSlice() {
		parts = append(parts, string(kv.Key)+"="+kv.Value.Emit())
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func TestNilMetricsRecordsNothing(t *testing.T) {
	var m *telemetry.Metrics
	m.RecordRetry("t", "m", "")
	m.AuthzDenied("r", "c", "m")
	m.XDSUpdate("s", "t", "v", true, "")
	m.OnEvent(func(telemetry.Event) { t.Error("event on a nil *Metrics") })()
}

func TestLogHandlerAddsTraceAndSpanIDs(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	defer tp.Shutdown(context.Background())
	var buf bytes.Buffer
	logger := slog.New(telemetry.NewLogHandler(slog.NewJSONHandler(&buf, nil))).With("component", "test")
	ctx, span := tp.Tracer("test").Start(context.Background(), "op")
	logger.InfoContext(ctx, "in span")
	span.End()
	logger.InfoContext(context.Background(), "no span")

	type line struct {
		Msg       string
		Component string
		TraceID   string `json:"trace_id"`
		SpanID    string `json:"span_id"`
	}
	var got []line
	dec := json.NewDecoder(&buf)
	for dec.More() {
		var l line
		if err := dec.Decode(&l); err != nil {
			t.Fatal(err)
		}
		got = append(got, l)
	}
	want := []line{
		{"in span", "test", span.SpanContext().TraceID().String(), span.SpanContext().SpanID().String()},
		{"no span", "test", "", ""},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("log lines (-want +got):\n%s", diff)
	}
}
