// Package telemetry sets up OpenTelemetry for a meshed service: exporters
// and providers from the standard OTEL_* environment or from code, and a
// slog handler that stamps records with trace_id and span_id. The mesh
// does the rest itself once the providers exist.
//
// Off means off: until Setup (or anyone) installs SDK providers, the
// OpenTelemetry globals are no-ops and the mesh installs no telemetry at
// all. Setup returns the providers and a Shutdown to flush them.
//
//	p, err := telemetry.Setup(ctx, telemetry.FromEnv()) // OTEL_TRACES_EXPORTER=otlp ...
//	if err != nil {
//		return err
//	}
//	defer p.Shutdown(context.Background())
//	logger := slog.New(telemetry.NewLogHandler(slog.NewJSONHandler(os.Stderr, nil)))
//	srv, err := mesh.NewServer(mesh.WithIdentity(src), mesh.WithLogger(logger))
//
// What the mesh records with them, on gRPC and HTTP alike:
//
//   - Golden metrics for every call, on both sides, under the current
//     semantic conventions: rpc.server.call.duration and
//     rpc.client.call.duration (seconds, by rpc.method, where a method
//     the caller's generated code does not name, or on the server a
//     method the server does not register, is "_OTHER", and
//     rpc.response.status_code), http.server.request.duration and
//     http.client.request.duration (by http.request.method, http.route,
//     never the raw path, and http.response.status_code), each also by
//     mesh.source and mesh.destination (the caller's and callee's SPIFFE
//     IDs) and, on the client, mesh.target; the client counts attempts
//     apart (mesh.rpc.client.attempts, mesh.http.client.attempts), so a
//     retried call shows as one call and several attempts. The mesh
//     counts them in its own lock-free aggregates, which the readers
//     Setup builds collect at collection time (a metric Producer): no SDK
//     instrument is touched on a call. A sampled call's duration is its
//     bucket's exemplar. Event metrics (mesh.retries, mesh.authz.denials,
//     mesh.breaker.transitions, mesh.svid.rotations, mesh.xds.updates, ...)
//     go through the SDK as usual.
//   - Traces, sampled as Config.Sampler (OTEL_TRACES_SAMPLER) says, by
//     default parent-based: a call whose caller sampled is traced, one whose
//     caller did not is not, and new traces are sampled at
//     Config.SampleRatio (OTEL_TRACES_SAMPLER=parentbased_traceidratio,
//     OTEL_TRACES_SAMPLER_ARG). Every sampler of the spec that decides
//     locally is honoured (always_on, always_off, traceidratio by trace
//     ID, and their parentbased_ forms); Setup refuses the others and bad
//     arguments with an error. The mesh takes that decision before it
//     allocates anything for a span; an unsampled call gets no span and
//     passes W3C traceparent, tracestate and baggage on unchanged. A
//     client call is a span with one span per attempt beneath (mesh.attempt,
//     mesh.attempt.kind first, retry or hedge); server spans carry both
//     identities and the authorization decision (mesh.authz.decision,
//     mesh.authz.rule for a refusal).
package telemetry
