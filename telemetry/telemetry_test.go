package telemetry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/gridmesh/gridmesh/internal/meshtel"
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
		}, telemetry.Config{Metrics: "prometheus", PrometheusAddr: "localhost:9999", Sampler: "parentbased_traceidratio", SamplerArg: "0.25", MetricInterval: 5 * time.Second}},
		{"ratio sampler without its argument is 1, as the spec says", map[string]string{"OTEL_TRACES_SAMPLER": "traceidratio"},
			telemetry.Config{Sampler: "traceidratio", SampleRatio: 1}},
		{"other samplers passed on for Setup to check", map[string]string{"OTEL_TRACES_SAMPLER": "xray", "OTEL_TRACES_SAMPLER_ARG": "x"},
			telemetry.Config{Sampler: "xray", SamplerArg: "x"}},
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

// TestSetupSamplers sets up tracing from each OTEL_TRACES_SAMPLER value
// the spec defines (and bad arguments) and checks, for the ones the mesh
// honours, the mesh's decision for a call with a sampled parent, an
// unsampled parent and none, over traces whose IDs fall either side of
// the ratio; for the others, Setup's error.
func TestSetupSamplers(t *testing.T) {
	const allowed = "use one of parentbased_always_on, parentbased_always_off, parentbased_traceidratio, always_on, always_off, traceidratio (Config.Sampler)"
	// Trace IDs whose low 63 bits are 0x...01 (under any ratio above 0)
	// and 0x7f... (over any ratio below 1).
	const low, high = "4bf92f3577b34da60000000000000002", "4bf92f3577b34da6fffffffffffffffe"
	type decisions struct{ SampledParentLow, SampledParentHigh, UnsampledParentLow, UnsampledParentHigh, RootsOf200 string }
	all := decisions{"yes", "yes", "yes", "yes", "all"}
	none := decisions{"no", "no", "no", "no", "none"}
	follow := func(roots string) decisions { return decisions{"yes", "yes", "no", "no", roots} }
	for _, tc := range []struct {
		name, sampler, arg string
		want               decisions
		err                string
	}{
		{"always_on", "always_on", "", all, ""},
		{"always_off", "always_off", "", none, ""},
		{"parentbased_always_on", "parentbased_always_on", "", follow("all"), ""},
		{"parentbased_always_off", "parentbased_always_off", "", follow("none"), ""},
		{"traceidratio by trace ID", "traceidratio", "0.5", decisions{"yes", "no", "yes", "no", "some"}, ""},
		{"traceidratio 0", "traceidratio", "0", none, ""},
		{"traceidratio without argument", "traceidratio", "", all, ""},
		{"parentbased_traceidratio", "parentbased_traceidratio", "0.5", follow("some"), ""},
		{"parentbased_traceidratio 1", "parentbased_traceidratio", "1", follow("all"), ""},
		{"unset: parentbased_always_on", "", "", follow("all"), ""},
		{"jaeger_remote", "jaeger_remote", "endpoint=http://localhost:14250", none,
			`OTEL_TRACES_SAMPLER "jaeger_remote" is not supported: the mesh decides each call's sampling itself, before it starts a span, and follows no remote sampling strategy; ` + allowed},
		{"parentbased_jaeger_remote", "parentbased_jaeger_remote", "", none, `OTEL_TRACES_SAMPLER "parentbased_jaeger_remote" is not supported`},
		{"xray", "xray", "", none, `OTEL_TRACES_SAMPLER "xray" is not supported`},
		{"unknown", "sometimes", "", none, `OTEL_TRACES_SAMPLER "sometimes" is not a sampler: ` + allowed},
		{"upper case", "ALWAYS_ON", "", none, `OTEL_TRACES_SAMPLER "ALWAYS_ON" is not a sampler`},
		{"argument not a number", "traceidratio", "one percent", none,
			`OTEL_TRACES_SAMPLER_ARG "one percent" for sampler traceidratio is not a ratio: set a number in [0,1], e.g. 0.01 for 1% of traces (Config.SamplerArg)`},
		{"argument above 1", "parentbased_traceidratio", "1.5", none, `OTEL_TRACES_SAMPLER_ARG "1.5" for sampler parentbased_traceidratio is not a ratio`},
		{"argument below 0", "traceidratio", "-0.1", none, `OTEL_TRACES_SAMPLER_ARG "-0.1" for sampler traceidratio is not a ratio`},
		{"argument NaN", "traceidratio", "NaN", none, `OTEL_TRACES_SAMPLER_ARG "NaN" for sampler traceidratio is not a ratio`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("OTEL_TRACES_SAMPLER", tc.sampler)
			t.Setenv("OTEL_TRACES_SAMPLER_ARG", tc.arg)
			cfg := telemetry.FromEnv()
			cfg.Traces, cfg.Stdout, cfg.NoGlobal = "console", io.Discard, true
			p, err := telemetry.Setup(timeout(t), cfg)
			if tc.err != "" {
				if err == nil {
					p.Shutdown(timeout(t))
					t.Fatal("Setup succeeded, want an error")
				}
				if !strings.Contains(err.Error(), tc.err) {
					t.Errorf("error %q, want it to contain %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer p.Shutdown(timeout(t))
			tr := meshtel.NewTracing(p.TracerProvider)
			yes := func(parent string) string {
				ctx, span := tr.ServerStart(context.Background(), meshtel.Incoming{Traceparent: parent}, "m", trace.SpanKindServer, nil)
				if span == nil {
					return "no"
				}
				span.End()
				if sampled, _ := tr.ClientDecision(ctx); !sampled {
					return "server span, but its outgoing call not sampled"
				}
				return "yes"
			}
			roots := "none"
			for i := range 200 {
				sampled, _ := tr.ClientDecision(context.Background())
				switch {
				case sampled && (i == 0 || roots == "all"):
					roots = "all"
				case sampled || roots == "all":
					roots = "some"
				}
			}
			got := decisions{
				SampledParentLow: yes("00-" + low + "-00f067aa0ba902b7-01"), SampledParentHigh: yes("00-" + high + "-00f067aa0ba902b7-01"),
				UnsampledParentLow: yes("00-" + low + "-00f067aa0ba902b7-00"), UnsampledParentHigh: yes("00-" + high + "-00f067aa0ba902b7-00"),
				RootsOf200: roots,
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("decisions (-want +got):\n%s", diff)
			}
		})
	}
}

// TestRatioRootsAgreeWithTraceIDRatio: a new trace the mesh samples at a
// traceidratio has a trace ID the ratio samples, and one it does not
// sample goes on with an ID the ratio does not sample, so that every
// other hop deciding by trace ID (traceidratio) keeps the trace whole.
func TestRatioRootsAgreeWithTraceIDRatio(t *testing.T) {
	p, err := telemetry.Setup(timeout(t), telemetry.Config{Traces: "console", Stdout: io.Discard, NoGlobal: true, Sampler: "traceidratio", SampleRatio: 0.3})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Shutdown(timeout(t))
	tr := meshtel.NewTracing(p.TracerProvider)
	ratio := sdktrace.TraceIDRatioBased(0.3)
	var sampled, unsampled int
	for i := range 400 {
		ok, ctx := tr.ClientDecision(context.Background())
		var id trace.TraceID
		if ok {
			sampled++
			_, span := tr.Start(ctx, "m", trace.SpanKindClient)
			if span == nil {
				t.Fatalf("root %d: sampled, but the SDK dropped its span", i)
			}
			id = span.SpanContext().TraceID()
			span.End()
		} else {
			unsampled++
			tp, _, _ := meshtel.Outgoing(ctx)
			var err error
			if id, err = trace.TraceIDFromHex(tp[3:35]); err != nil {
				t.Fatalf("root %d: outgoing traceparent %q: %v", i, tp, err)
			}
		}
		if got := ratio.ShouldSample(sdktrace.SamplingParameters{TraceID: id}).Decision == sdktrace.RecordAndSample; got != ok {
			t.Fatalf("root %d: the mesh sampled %v, TraceIDRatioBased(0.3) samples its trace %s %v", i, ok, id, got)
		}
	}
	if sampled == 0 || unsampled == 0 {
		t.Errorf("%d sampled, %d not, of 400 at ratio 0.3", sampled, unsampled)
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
	// The mesh records its calls into the Hub the provider carries; the
	// scrape reads it at collection time.
	hub := p.MeterProvider.(meshtel.HubOwner).MeshHub()
	hub.RPCServer.Series(meshtel.Key{Method: "pkg.S/M", Status: "PERMISSION_DENIED", Source: "spiffe://example.org/guest",
		Destination: "spiffe://example.org/trading"}).Observe(3*time.Millisecond, trace.SpanContext{})

	req, _ := http.NewRequestWithContext(timeout(t), "GET", "http://"+p.PrometheusAddr()+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`rpc_server_call_duration_seconds_bucket{mesh_destination="spiffe://example.org/trading",mesh_source="spiffe://example.org/guest",otel_scope_name="github.com/gridmesh/gridmesh/mesh",otel_scope_schema_url="",otel_scope_version="",rpc_method="pkg.S/M",rpc_response_status_code="PERMISSION_DENIED",rpc_system_name="grpc",le="0.0025"} 0`,
		`rpc_server_call_duration_seconds_bucket{mesh_destination="spiffe://example.org/trading",mesh_source="spiffe://example.org/guest",otel_scope_name="github.com/gridmesh/gridmesh/mesh",otel_scope_schema_url="",otel_scope_version="",rpc_method="pkg.S/M",rpc_response_status_code="PERMISSION_DENIED",rpc_system_name="grpc",le="0.005"} 1`,
		`rpc_server_call_duration_seconds_count{mesh_destination="spiffe://example.org/trading",mesh_source="spiffe://example.org/guest",otel_scope_name="github.com/gridmesh/gridmesh/mesh",otel_scope_schema_url="",otel_scope_version="",rpc_method="pkg.S/M",rpc_response_status_code="PERMISSION_DENIED",rpc_system_name="grpc"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics does not contain %s:\n%s", want, body)
		}
	}
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

// TestSetupPushExportersCarryMeshMetrics: the push exporters (console here,
// OTLP through the same periodic reader) export the mesh's call metrics
// with the SDK's, the histogram with its buckets.
func TestSetupPushExportersCarryMeshMetrics(t *testing.T) {
	var out bytes.Buffer
	p, err := telemetry.Setup(timeout(t), telemetry.Config{ServiceName: "svc", Metrics: "console", Stdout: &out, NoGlobal: true})
	if err != nil {
		t.Fatal(err)
	}
	hub := p.MeterProvider.(meshtel.HubOwner).MeshHub()
	s := hub.HTTPClient.Series(meshtel.Key{Method: "GET", Code: 200, Target: "trading.mesh"})
	for range 3 {
		s.Observe(2*time.Millisecond, trace.SpanContext{})
	}
	if err := p.Shutdown(timeout(t)); err != nil {
		t.Fatal(err)
	}
	var got struct {
		ScopeMetrics []struct {
			Scope   struct{ Name string }
			Metrics []struct {
				Name string
				Unit string
				Data struct {
					DataPoints []struct {
						Count        uint64
						BucketCounts []uint64
					}
				}
			}
		}
	}
	if err := json.NewDecoder(&out).Decode(&got); err != nil {
		t.Fatalf("console output %q: %v", out.String(), err)
	}
	var found []string
	for _, sm := range got.ScopeMetrics {
		for _, m := range sm.Metrics {
			for _, dp := range m.Data.DataPoints {
				found = append(found, fmt.Sprint(sm.Scope.Name, " ", m.Name, " ", m.Unit, " ", dp.Count, " ", dp.BucketCounts))
			}
		}
	}
	want := []string{"github.com/gridmesh/gridmesh/mesh http.client.request.duration s 3 [0 0 0 0 3 0 0 0 0 0 0 0 0 0 0 0 0]"}
	if diff := cmp.Diff(want, found); diff != "" {
		t.Errorf("exported (-want +got):\n%s", diff)
	}
}
