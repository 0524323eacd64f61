// Package telemetry is the mesh's OpenTelemetry side: setting up exporters
// from the standard OTEL_* environment or from code, the otelgrpc stats
// handlers with W3C trace-context and baggage propagation, the mesh's own
// metrics labelled by caller and callee SPIFFE identity, and a slog handler
// that stamps records with trace_id and span_id.
//
// Off means off: until Setup (or anyone) installs SDK providers, the
// OpenTelemetry globals are no-ops, and so is everything this package
// records. Setup returns the providers and a Shutdown to flush them.
//
//	p, err := telemetry.Setup(ctx, telemetry.FromEnv()) // OTEL_TRACES_EXPORTER=otlp ...
//	if err != nil {
//		return err
//	}
//	defer p.Shutdown(context.Background())
//	logger := slog.New(telemetry.NewLogHandler(slog.NewJSONHandler(os.Stderr, nil)))
//	srv, err := mesh.NewServer(mesh.WithIdentity(src), mesh.WithLogger(logger))
//
// The leaf packages (discovery, resilience, security, controlplane) report
// events through callbacks; the mesh connects them to a *Metrics, whose
// methods (RecordRetry, BreakerStateChanged, OutlierEjected, AuthzDenied,
// SVIDRotated, DiscoveryUpdate, XDSUpdate, UnsupportedField) both count
// and feed the admin endpoint (package telemetry/admin).
package telemetry
