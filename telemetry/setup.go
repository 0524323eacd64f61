package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/exporters/stdout/stdoutmetric"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/gridmesh/gridmesh/internal/meshtel"
)

// Exporter names, as the OTEL_TRACES_EXPORTER and OTEL_METRICS_EXPORTER
// environment variables spell them.
const (
	ExporterNone       = "none"
	ExporterOTLP       = "otlp"
	ExporterStdout     = "console" // the spec's name; "stdout" is accepted too
	ExporterPrometheus = "prometheus"
)

// Samplers, as OTEL_TRACES_SAMPLER and Config.Sampler spell them.
const (
	SamplerAlwaysOn                = "always_on"
	SamplerAlwaysOff               = "always_off"
	SamplerTraceIDRatio            = "traceidratio"
	SamplerParentBasedAlwaysOn     = "parentbased_always_on"
	SamplerParentBasedAlwaysOff    = "parentbased_always_off"
	SamplerParentBasedTraceIDRatio = "parentbased_traceidratio"
)

// OTLP protocols, as OTEL_EXPORTER_OTLP_PROTOCOL spells them.
const (
	ProtocolGRPC = "grpc"
	ProtocolHTTP = "http/protobuf"
)

// Config says which exporters Setup builds. The zero Config exports
// nothing: both providers are no-ops. FromEnv fills a Config from the
// standard OTEL_* environment.
//
// Endpoints, headers, timeouts, TLS and compression of the OTLP exporters
// are not fields here: the OTLP exporters read them from the standard
// OTEL_EXPORTER_OTLP_* variables themselves (default endpoint
// localhost:4317 for gRPC, localhost:4318 for HTTP).
type Config struct {
	// ServiceName is the service.name resource attribute. Default:
	// OTEL_SERVICE_NAME, else the program's name.
	ServiceName string
	// Traces is "otlp", "console" (or "stdout") or "none"/"" (no tracing).
	Traces string
	// Metrics is "otlp", "console" (or "stdout"), "prometheus" or
	// "none"/"" (no metrics).
	Metrics string
	// TracesProtocol and MetricsProtocol are "grpc" (default) or
	// "http/protobuf".
	TracesProtocol, MetricsProtocol string
	// PrometheusAddr, when Metrics is "prometheus", is where Setup serves
	// the scrape endpoint (/metrics). Default "localhost:9464", the spec's
	// OTEL_EXPORTER_PROMETHEUS_HOST/PORT default. "-" serves nothing: use
	// Providers.PrometheusHandler in your own server instead.
	PrometheusAddr string
	// Stdout is where the console exporters write. Default os.Stdout.
	Stdout io.Writer
	// Sampler is how traces are sampled, named as OTEL_TRACES_SAMPLER
	// names the spec's samplers: "always_on", "always_off",
	// "traceidratio", "parentbased_always_on", "parentbased_always_off" or
	// "parentbased_traceidratio" (the Sampler* constants). The
	// parentbased_ ones follow a call's parent's decision and apply theirs
	// to new traces only; the others decide every call themselves,
	// "traceidratio" by the trace ID, so that hops with the same ratio
	// agree and a trace stays whole. Default "": "parentbased_traceidratio"
	// when SampleRatio is in (0,1), else "parentbased_always_on" (the
	// spec's default). Setup refuses any other value (jaeger_remote,
	// parentbased_jaeger_remote and xray among them: the mesh decides
	// each call itself, before it starts a span, and follows no remote
	// sampling strategy).
	Sampler string
	// SampleRatio is the fraction of traces the traceidratio samplers
	// sample, in [0,1]: 0 samples none. With Sampler "" only a ratio in
	// (0,1) counts (the zero Config samples every trace); say "none" with
	// Sampler "always_off", or "parentbased_always_off" to follow callers
	// only.
	SampleRatio float64
	// SamplerArg is OTEL_TRACES_SAMPLER_ARG as FromEnv read it. When not
	// "" and Sampler is a traceidratio sampler, Setup takes it as the
	// ratio in place of SampleRatio and refuses it unless it is a number
	// in [0,1]; the other samplers ignore it, as the spec says. Code sets
	// SampleRatio instead.
	SamplerArg string
	// MetricInterval is how often OTLP and console metrics are exported.
	// Default 60s (OTEL_METRIC_EXPORT_INTERVAL when read by FromEnv).
	MetricInterval time.Duration
	// NoGlobal keeps Setup from installing the providers and the W3C
	// propagator as the OpenTelemetry globals. Pass the providers to the
	// mesh explicitly then (mesh.WithTracerProvider, mesh.WithMeterProvider).
	NoGlobal bool
}

// FromEnv returns the Config the standard environment asks for:
// OTEL_SDK_DISABLED, OTEL_SERVICE_NAME, OTEL_TRACES_EXPORTER,
// OTEL_METRICS_EXPORTER, OTEL_EXPORTER_OTLP_PROTOCOL (and its _TRACES_ and
// _METRICS_ forms), OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG,
// OTEL_METRIC_EXPORT_INTERVAL and OTEL_EXPORTER_PROMETHEUS_HOST/PORT.
//
// Unlike the spec, an unset OTEL_TRACES_EXPORTER or OTEL_METRICS_EXPORTER
// means "none", not "otlp": a service that calls Setup(ctx, FromEnv())
// unconditionally costs nothing until someone configures an exporter.
// It never fails: invalid values are reported by Setup.
func FromEnv() Config {
	cfg := Config{
		ServiceName:     os.Getenv("OTEL_SERVICE_NAME"),
		Traces:          os.Getenv("OTEL_TRACES_EXPORTER"),
		Metrics:         os.Getenv("OTEL_METRICS_EXPORTER"),
		TracesProtocol:  firstEnv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
		MetricsProtocol: firstEnv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
	}
	if strings.EqualFold(os.Getenv("OTEL_SDK_DISABLED"), "true") {
		cfg.Traces, cfg.Metrics = ExporterNone, ExporterNone
	}
	host, port := os.Getenv("OTEL_EXPORTER_PROMETHEUS_HOST"), os.Getenv("OTEL_EXPORTER_PROMETHEUS_PORT")
	if host != "" || port != "" {
		if host == "" {
			host = "localhost"
		}
		if port == "" {
			port = "9464"
		}
		cfg.PrometheusAddr = net.JoinHostPort(host, port)
	}
	cfg.Sampler, cfg.SamplerArg = os.Getenv("OTEL_TRACES_SAMPLER"), os.Getenv("OTEL_TRACES_SAMPLER_ARG")
	if isRatioSampler(cfg.Sampler) && cfg.SamplerArg == "" {
		cfg.SampleRatio = 1 // the spec's default for a ratio without its argument
	}
	if v := os.Getenv("OTEL_METRIC_EXPORT_INTERVAL"); v != "" {
		var ms int64
		if _, err := fmt.Sscan(v, &ms); err == nil && ms > 0 {
			cfg.MetricInterval = time.Duration(ms) * time.Millisecond
		}
	}
	return cfg
}

func firstEnv(names ...string) string {
	for _, n := range names {
		if v := os.Getenv(n); v != "" {
			return v
		}
	}
	return ""
}

// Providers is what Setup built. Safe for concurrent use.
type Providers struct {
	// TracerProvider and MeterProvider are no-op providers for a signal
	// that is off.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider

	prom     http.Handler
	promSrv  *http.Server
	promLis  net.Listener
	promDone chan struct{}
	shutdown []func(context.Context) error
	flush    []func(context.Context) error
	once     sync.Once
	err      error
}

// PrometheusHandler returns the scrape handler when Metrics is
// "prometheus", else nil.
func (p *Providers) PrometheusHandler() http.Handler { return p.prom }

// PrometheusAddr returns the address the scrape endpoint listens on, or ""
// when Setup serves none.
func (p *Providers) PrometheusAddr() string {
	if p.promLis == nil {
		return ""
	}
	return p.promLis.Addr().String()
}

// ForceFlush exports what has been recorded so far. It blocks until done or
// ctx ends.
func (p *Providers) ForceFlush(ctx context.Context) error {
	var errs []error
	for _, f := range p.flush {
		errs = append(errs, f(ctx))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("telemetry: flush: %w", err)
	}
	return nil
}

// Shutdown flushes and stops the exporters and the scrape endpoint. It
// blocks until done or ctx ends, and is safe to call more than once. The
// globals Setup installed stay installed (as spent providers).
func (p *Providers) Shutdown(ctx context.Context) error {
	p.once.Do(func() {
		var errs []error
		for _, f := range p.shutdown {
			errs = append(errs, f(ctx))
		}
		if p.promSrv != nil {
			errs = append(errs, p.promSrv.Shutdown(ctx))
			<-p.promDone
		}
		if err := errors.Join(errs...); err != nil {
			p.err = fmt.Errorf("telemetry: shutdown: %w", err)
		}
	})
	return p.err
}

// Setup builds the exporters and providers cfg asks for and, unless
// cfg.NoGlobal, installs them and the W3C propagator as the OpenTelemetry
// globals, which the mesh uses by default. A signal that is "none" keeps
// the global untouched (a no-op unless someone else set it). Call Shutdown
// on the result before the process exits. Setup does not block on the
// network: OTLP exporters connect lazily.
//
//	p, err := telemetry.Setup(ctx, telemetry.FromEnv())
//	if err != nil { return err }
//	defer p.Shutdown(context.Background())
func Setup(ctx context.Context, cfg Config) (*Providers, error) {
	p := &Providers{TracerProvider: tracenoop.NewTracerProvider(), MeterProvider: metricnoop.NewMeterProvider()}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(semconv.ServiceName(serviceName(cfg))))
	if err != nil {
		return nil, fmt.Errorf("telemetry: resource: %w", err)
	}
	if r, err := resource.New(ctx, resource.WithFromEnv()); err == nil {
		if merged, err := resource.Merge(res, r); err == nil {
			res = merged
		}
	}
	fail := func(err error) (*Providers, error) {
		_ = p.Shutdown(ctx)
		return nil, err
	}

	ratio, parentBased, err := sampling(cfg)
	if err != nil {
		return fail(err)
	}
	var spanExp sdktrace.SpanExporter
	switch strings.ToLower(cfg.Traces) {
	case "", ExporterNone:
	case ExporterOTLP:
		switch proto := strings.ToLower(cfg.TracesProtocol); proto {
		case "", ProtocolGRPC:
			spanExp, err = otlptracegrpc.New(ctx)
		case ProtocolHTTP, "http":
			spanExp, err = otlptracehttp.New(ctx)
		default:
			return fail(fmt.Errorf("telemetry: traces protocol %q is not supported: use %q or %q (OTEL_EXPORTER_OTLP_PROTOCOL)", cfg.TracesProtocol, ProtocolGRPC, ProtocolHTTP))
		}
	case ExporterStdout, "stdout":
		spanExp, err = stdouttrace.New(stdouttrace.WithWriter(stdout(cfg)))
	default:
		return fail(fmt.Errorf("telemetry: traces exporter %q is not supported: use %q, %q or %q (OTEL_TRACES_EXPORTER)", cfg.Traces, ExporterOTLP, ExporterStdout, ExporterNone))
	}
	if err != nil {
		return fail(fmt.Errorf("telemetry: traces exporter: %w", err))
	}
	if spanExp != nil {
		// The mesh takes the sampling decision for its calls itself,
		// before it allocates anything for a span (meshtel.Tracing), with
		// the same sampler; the SDK's sampler follows it, and its ID
		// generator gives a root span the trace ID the mesh decided on.
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(spanExp), sdktrace.WithResource(res),
			sdktrace.WithSampler(meshtel.SDKSampler(ratio, parentBased)), sdktrace.WithIDGenerator(meshtel.IDGenerator()))
		p.TracerProvider = &tracerProvider{TracerProvider: tp, ratio: ratio, parentBased: parentBased}
		p.shutdown = append(p.shutdown, tp.Shutdown)
		p.flush = append(p.flush, tp.ForceFlush)
	}

	// The mesh's golden call metrics live in hub, lock-free aggregates the
	// readers collect at collection time: no SDK instrument is touched on
	// a call.
	hub := meshtel.NewHub()
	var reader sdkmetric.Reader
	interval := cfg.MetricInterval
	if interval <= 0 {
		interval = time.Minute
	}
	switch strings.ToLower(cfg.Metrics) {
	case "", ExporterNone:
	case ExporterOTLP:
		var exp sdkmetric.Exporter
		switch strings.ToLower(cfg.MetricsProtocol) {
		case "", ProtocolGRPC:
			exp, err = otlpmetricgrpc.New(ctx)
		case ProtocolHTTP, "http":
			exp, err = otlpmetrichttp.New(ctx)
		default:
			return fail(fmt.Errorf("telemetry: metrics protocol %q is not supported: use %q or %q (OTEL_EXPORTER_OTLP_PROTOCOL)", cfg.MetricsProtocol, ProtocolGRPC, ProtocolHTTP))
		}
		if err == nil {
			reader = sdkmetric.NewPeriodicReader(exp, sdkmetric.WithInterval(interval), sdkmetric.WithProducer(hub))
		}
	case ExporterStdout, "stdout":
		var exp sdkmetric.Exporter
		exp, err = stdoutmetric.New(stdoutmetric.WithWriter(stdout(cfg)))
		if err == nil {
			reader = sdkmetric.NewPeriodicReader(exp, sdkmetric.WithInterval(interval), sdkmetric.WithProducer(hub))
		}
	case ExporterPrometheus:
		reg := prometheus.NewRegistry()
		var exp *otelprom.Exporter
		exp, err = otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithProducer(hub))
		if err == nil {
			reader = exp
			p.prom = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
		}
	default:
		return fail(fmt.Errorf("telemetry: metrics exporter %q is not supported: use %q, %q, %q or %q (OTEL_METRICS_EXPORTER)", cfg.Metrics, ExporterOTLP, ExporterStdout, ExporterPrometheus, ExporterNone))
	}
	if err != nil {
		return fail(fmt.Errorf("telemetry: metrics exporter: %w", err))
	}
	if reader != nil {
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader), sdkmetric.WithResource(res))
		p.MeterProvider = meshtel.WithHub(mp, hub)
		p.shutdown = append(p.shutdown, mp.Shutdown)
		p.flush = append(p.flush, mp.ForceFlush)
	}
	if p.prom != nil && cfg.PrometheusAddr != "-" {
		addr := cfg.PrometheusAddr
		if addr == "" {
			addr = "localhost:9464"
		}
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			return fail(fmt.Errorf("telemetry: prometheus endpoint: %w (set OTEL_EXPORTER_PROMETHEUS_HOST/PORT or Config.PrometheusAddr)", err))
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", p.prom)
		p.promLis, p.promDone = lis, make(chan struct{})
		p.promSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			defer close(p.promDone)
			_ = p.promSrv.Serve(lis) // ends with ErrServerClosed on Shutdown
		}()
	}

	if !cfg.NoGlobal {
		if spanExp != nil {
			otel.SetTracerProvider(p.TracerProvider)
		}
		if reader != nil {
			otel.SetMeterProvider(p.MeterProvider)
		}
		otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	}
	return p, nil
}

func serviceName(cfg Config) string {
	if cfg.ServiceName != "" {
		return cfg.ServiceName
	}
	if v := os.Getenv("OTEL_SERVICE_NAME"); v != "" {
		return v
	}
	if len(os.Args) > 0 {
		name := os.Args[0]
		if i := strings.LastIndexAny(name, `/\`); i >= 0 {
			name = name[i+1:]
		}
		return name
	}
	return "unknown_service:go"
}

func stdout(cfg Config) io.Writer {
	if cfg.Stdout != nil {
		return cfg.Stdout
	}
	return os.Stdout
}

// tracerProvider is the SDK provider Setup builds, with how it samples,
// which the mesh applies itself.
type tracerProvider struct {
	trace.TracerProvider
	ratio       float64
	parentBased bool
}

func (t *tracerProvider) MeshSampling() (float64, bool) { return t.ratio, t.parentBased }

func isRatioSampler(name string) bool {
	return name == SamplerTraceIDRatio || name == SamplerParentBasedTraceIDRatio
}

// sampling is the sampler cfg asks for, as the fraction of traces sampled
// and whether a call with a parent follows the parent's decision.
func sampling(cfg Config) (ratio float64, parentBased bool, err error) {
	allowed := strings.Join([]string{SamplerParentBasedAlwaysOn, SamplerParentBasedAlwaysOff, SamplerParentBasedTraceIDRatio,
		SamplerAlwaysOn, SamplerAlwaysOff, SamplerTraceIDRatio}, ", ")
	switch cfg.Sampler {
	case "":
		if cfg.SampleRatio > 0 && cfg.SampleRatio < 1 {
			return cfg.SampleRatio, true, nil
		}
		return 1, true, nil
	case SamplerAlwaysOn:
		return 1, false, nil
	case SamplerAlwaysOff:
		return 0, false, nil
	case SamplerParentBasedAlwaysOn:
		return 1, true, nil
	case SamplerParentBasedAlwaysOff:
		return 0, true, nil
	case SamplerTraceIDRatio, SamplerParentBasedTraceIDRatio:
		parentBased = cfg.Sampler == SamplerParentBasedTraceIDRatio
		if cfg.SamplerArg != "" {
			r, err := strconv.ParseFloat(strings.TrimSpace(cfg.SamplerArg), 64)
			if err != nil || !(r >= 0 && r <= 1) {
				return 0, false, fmt.Errorf("telemetry: OTEL_TRACES_SAMPLER_ARG %q for sampler %s is not a ratio: set a number in [0,1], e.g. 0.01 for 1%% of traces (Config.SamplerArg)", cfg.SamplerArg, cfg.Sampler)
			}
			return r, parentBased, nil
		}
		if !(cfg.SampleRatio >= 0 && cfg.SampleRatio <= 1) {
			return 0, false, fmt.Errorf("telemetry: Config.SampleRatio %v for sampler %s is not a ratio: set a number in [0,1]", cfg.SampleRatio, cfg.Sampler)
		}
		return cfg.SampleRatio, parentBased, nil
	case "jaeger_remote", "parentbased_jaeger_remote", "xray":
		return 0, false, fmt.Errorf("telemetry: OTEL_TRACES_SAMPLER %q is not supported: the mesh decides each call's sampling itself, before it starts a span, and follows no remote sampling strategy; use one of %s (Config.Sampler)", cfg.Sampler, allowed)
	default:
		return 0, false, fmt.Errorf("telemetry: OTEL_TRACES_SAMPLER %q is not a sampler: use one of %s (Config.Sampler)", cfg.Sampler, allowed)
	}
}
