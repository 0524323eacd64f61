package meshtel

import (
	"context"
	"encoding/hex"
	"math/rand/v2"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Span attribute keys the mesh adds.
const (
	KeyAttempt     = attribute.Key("mesh.attempt")      // 1 for the first attempt of a call
	KeyAttemptKind = attribute.Key("mesh.attempt.kind") // "first", "retry" or "hedge"
	KeyRule        = attribute.Key("mesh.authz.rule")   // rule that refused the call
	KeyDecision    = attribute.Key("mesh.authz.decision")
	KeyRoute       = attribute.Key("mesh.route")   // meshd route an HTTP attempt took
	KeyCluster     = attribute.Key("mesh.cluster") // cluster an HTTP attempt went to
)

// RootSampler is implemented by the tracer providers telemetry.Setup
// builds: MeshRootRatio is the fraction of new traces to sample, which the
// mesh decides itself before anything is allocated for a span.
type RootSampler interface{ MeshRootRatio() float64 }

// Tracing starts the mesh's spans on one tracer. The sampling decision is
// parent-based and taken before a span is started: a call whose parent is
// not sampled gets no span, and its W3C context passes on unchanged. With
// a RootSampler provider the ratio for new traces is decided here too;
// with another provider its sampler decides (and may allocate a span it
// then drops). Safe for concurrent use.
type Tracing struct {
	tracer    trace.Tracer
	rootKnown bool
	threshold uint64 // sample a root when rand.Uint64() < threshold
	always    bool
}

// NewTracing returns the tracing for tp, or nil when tp is nil.
func NewTracing(tp trace.TracerProvider) *Tracing {
	if tp == nil {
		return nil
	}
	t := &Tracing{tracer: tp.Tracer(ScopeName)}
	if rs, ok := tp.(RootSampler); ok {
		t.rootKnown = true
		r := rs.MeshRootRatio()
		switch {
		case r >= 1:
			t.always = true
		case r <= 0:
			t.threshold = 0
		default:
			t.threshold = uint64(r * (1 << 63) * 2)
		}
	}
	return t
}

func (t *Tracing) sampleRoot() bool {
	return t.always || (t.threshold > 0 && rand.Uint64() < t.threshold)
}

// meshSampled marks a context whose root span the mesh decided to sample,
// for SDKSampler.
type meshSampledKey struct{}

// SDKSampler is the sampler telemetry.Setup gives its TracerProvider:
// parent-based, new traces at ratio, except spans the mesh already
// decided to sample (it does not decide twice).
func SDKSampler(ratio float64) sdktrace.Sampler {
	var root sdktrace.Sampler = sdktrace.AlwaysSample()
	if ratio < 1 {
		root = sdktrace.TraceIDRatioBased(ratio)
	}
	return sdktrace.ParentBased(meshRoot{root})
}

type meshRoot struct{ sdktrace.Sampler }

func (m meshRoot) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	if p.ParentContext != nil && p.ParentContext.Value(meshSampledKey{}) != nil {
		return sdktrace.SamplingResult{Decision: sdktrace.RecordAndSample, Tracestate: trace.SpanContextFromContext(p.ParentContext).TraceState()}
	}
	return m.Sampler.ShouldSample(p)
}

func (m meshRoot) Description() string { return "MeshRoot{" + m.Sampler.Description() + "}" }

// passthrough is the W3C context of an unsampled incoming call, kept as
// received so outgoing calls carry it unchanged.
type passthrough struct{ traceparent, tracestate string }

type passKey struct{}

// Incoming is what a server read of the caller's W3C headers.
type Incoming struct {
	Traceparent, Tracestate, Baggage string
}

// ServerStart decides whether a server call is traced. Sampled: ctx
// carries a new server span (the caller's as parent) and span is it.
// Not sampled: span is nil and ctx carries the caller's context as
// received, for outgoing calls. Baggage, when sent, is in ctx either way.
func (t *Tracing) ServerStart(ctx context.Context, in Incoming, name string, kind trace.SpanKind, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	if in.Baggage != "" {
		if b, err := baggage.Parse(in.Baggage); err == nil {
			ctx = baggage.ContextWithBaggage(ctx, b)
		}
	}
	parent, ok := parseTraceparent(in.Traceparent)
	var sampled bool
	switch {
	case ok:
		sampled = parent.IsSampled()
	case t == nil:
	case t.rootKnown:
		sampled = t.sampleRoot()
		if sampled {
			ctx = context.WithValue(ctx, meshSampledKey{}, true)
		}
	default:
		sampled = true // the provider's sampler decides
	}
	if t == nil || !sampled {
		if ok {
			ctx = context.WithValue(ctx, passKey{}, &passthrough{in.Traceparent, in.Tracestate})
		}
		return ctx, nil
	}
	if ok {
		if in.Tracestate != "" {
			if ts, err := trace.ParseTraceState(in.Tracestate); err == nil {
				parent = parent.WithTraceState(ts)
			}
		}
		ctx = trace.ContextWithRemoteSpanContext(ctx, parent)
	}
	ctx, span := t.tracer.Start(ctx, name, trace.WithSpanKind(kind), trace.WithAttributes(attrs...))
	if !span.IsRecording() {
		return ctx, nil
	}
	return ctx, span
}

// Outgoing is the W3C context an outgoing call carries when it has no
// span of its own: the incoming context passed through, the unsampled
// local span's, or a new unsampled trace's. ok is false when there is
// nothing to send.
func Outgoing(ctx context.Context) (traceparent, tracestate string, ok bool) {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		return FormatTraceparent(sc), sc.TraceState().String(), true
	}
	if p, _ := ctx.Value(passKey{}).(*passthrough); p != nil {
		return p.traceparent, p.tracestate, true
	}
	return "", "", false
}

// ClientDecision says whether an outgoing call made with ctx is traced:
// its parent's decision, or for a new trace the ratio's.
func (t *Tracing) ClientDecision(ctx context.Context) (sampled bool, marked context.Context) {
	if t == nil {
		return false, ctx
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		return sc.IsSampled(), ctx
	}
	if ctx.Value(passKey{}) != nil {
		return false, ctx
	}
	if !t.rootKnown {
		return true, ctx
	}
	if t.sampleRoot() {
		return true, context.WithValue(ctx, meshSampledKey{}, true)
	}
	return false, context.WithValue(ctx, passKey{}, &passthrough{traceparent: newUnsampledTraceparent()})
}

// Start starts a span on ctx (for a call ClientDecision sampled). span is
// nil when the provider's sampler dropped it.
func (t *Tracing) Start(ctx context.Context, name string, kind trace.SpanKind, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	ctx, span := t.tracer.Start(ctx, name, trace.WithSpanKind(kind), trace.WithAttributes(attrs...))
	if !span.IsRecording() {
		return ctx, nil
	}
	return ctx, span
}

// newUnsampledTraceparent starts a trace that is not sampled, so hops
// downstream follow the decision rather than take their own.
func newUnsampledTraceparent() string {
	var sc trace.SpanContextConfig
	for sc.TraceID == (trace.TraceID{}) {
		putUint64(sc.TraceID[:8], rand.Uint64())
		putUint64(sc.TraceID[8:], rand.Uint64())
	}
	for sc.SpanID == (trace.SpanID{}) {
		putUint64(sc.SpanID[:], rand.Uint64())
	}
	return FormatTraceparent(trace.NewSpanContext(sc))
}

func putUint64(b []byte, v uint64) {
	for i := range 8 {
		b[i] = byte(v >> (56 - 8*i))
	}
}

// FormatTraceparent returns sc as a W3C traceparent header value.
func FormatTraceparent(sc trace.SpanContext) string {
	var b [55]byte
	b[0], b[1], b[2] = '0', '0', '-'
	tid, sid := sc.TraceID(), sc.SpanID()
	hex.Encode(b[3:35], tid[:])
	b[35] = '-'
	hex.Encode(b[36:52], sid[:])
	b[52] = '-'
	flags := sc.TraceFlags()
	hex.Encode(b[53:55], []byte{byte(flags)})
	return string(b[:])
}

// parseTraceparent reads a W3C traceparent without allocating.
func parseTraceparent(s string) (trace.SpanContext, bool) {
	if len(s) < 55 || s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return trace.SpanContext{}, false
	}
	ver, ok := hexByte(s[0], s[1])
	if !ok || ver == 0xff || (ver == 0 && len(s) != 55) || (len(s) > 55 && s[55] != '-') {
		return trace.SpanContext{}, false
	}
	var cfg trace.SpanContextConfig
	for i := range 16 {
		if cfg.TraceID[i], ok = hexByte(s[3+2*i], s[4+2*i]); !ok {
			return trace.SpanContext{}, false
		}
	}
	for i := range 8 {
		if cfg.SpanID[i], ok = hexByte(s[36+2*i], s[37+2*i]); !ok {
			return trace.SpanContext{}, false
		}
	}
	f, ok := hexByte(s[53], s[54])
	if !ok {
		return trace.SpanContext{}, false
	}
	cfg.TraceFlags = trace.TraceFlags(f) & trace.FlagsSampled
	cfg.Remote = true
	sc := trace.NewSpanContext(cfg)
	return sc, sc.IsValid()
}

func hexByte(a, b byte) (byte, bool) {
	x, ok1 := unhex(a)
	y, ok2 := unhex(b)
	return x<<4 | y, ok1 && ok2
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}
