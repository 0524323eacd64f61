package meshtel

import (
	"context"
	"encoding/binary"
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
// builds: MeshSampling says how they sample, which the mesh decides itself
// before anything is allocated for a span. ratio is the fraction of traces
// sampled (0 none, 1 all), decided by the trace ID as the OpenTelemetry
// TraceIdRatioBased sampler does, so that hops with the same ratio agree;
// parentBased says whether a span with a parent follows the parent's
// decision (the ParentBased samplers) or is decided by its trace ID too.
type RootSampler interface {
	MeshSampling() (ratio float64, parentBased bool)
}

// Tracing starts the mesh's spans on one tracer. The sampling decision is
// taken before a span is started: with a RootSampler provider the mesh
// takes it itself (see RootSampler), and a call it does not sample gets no
// span, its W3C context passing on unchanged; with another provider a
// call whose parent is not sampled gets no span, and that provider's
// sampler decides the rest (and may allocate a span it then drops). Safe
// for concurrent use.
type Tracing struct {
	tracer      trace.Tracer
	rootKnown   bool
	parentBased bool
	bound       uint64 // sample a trace ID whose low 63 bits are below bound
	always      bool
}

// NewTracing returns the tracing for tp, or nil when tp is nil.
func NewTracing(tp trace.TracerProvider) *Tracing {
	if tp == nil {
		return nil
	}
	t := &Tracing{tracer: tp.Tracer(ScopeName), parentBased: true}
	if rs, ok := tp.(RootSampler); ok {
		t.rootKnown = true
		var r float64
		r, t.parentBased = rs.MeshSampling()
		switch {
		case r >= 1:
			t.always = true
		case r > 0:
			t.bound = uint64(r * (1 << 63)) // as sdktrace.TraceIDRatioBased
		}
	}
	return t
}

// sampleID is the ratio's decision for a trace, the same as
// sdktrace.TraceIDRatioBased's for the same ratio.
func (t *Tracing) sampleID(id trace.TraceID) bool {
	return t.always || binary.BigEndian.Uint64(id[8:16])>>1 < t.bound
}

// follows says whether a span whose parent is sc takes the parent's
// decision rather than its own.
func (t *Tracing) follows() bool { return t.parentBased || !t.rootKnown }

// decide is the decision for a span whose parent is sc (a valid one).
func (t *Tracing) decide(sc trace.SpanContext) bool {
	if t.follows() {
		return sc.IsSampled()
	}
	return t.sampleID(sc.TraceID())
}

// newRoot starts a trace the mesh decides: a random trace ID and the
// ratio's decision for it. Sampled: ctx carries the ID for the provider's
// IDGenerator, which gives it to the root span. Not sampled: ctx carries
// an unsampled traceparent with it, so hops downstream follow the
// decision rather than take their own.
func (t *Tracing) newRoot(ctx context.Context) (bool, context.Context) {
	id, sampled := t.rootID()
	if sampled {
		return true, context.WithValue(ctx, meshSampledKey{}, id)
	}
	return false, &passCtx{Context: ctx, p: passthrough{traceparent: unsampledTraceparent(id)}}
}

// rootID is a new random trace ID and the ratio's decision for it.
func (t *Tracing) rootID() (trace.TraceID, bool) {
	var id trace.TraceID
	for id == (trace.TraceID{}) {
		binary.BigEndian.PutUint64(id[:8], rand.Uint64())
		binary.BigEndian.PutUint64(id[8:], rand.Uint64())
	}
	return id, t.sampleID(id)
}

// meshSampledKey marks a context whose root span the mesh decided to
// sample; its value is the trace ID the mesh decided on (a trace.TraceID).
type meshSampledKey struct{}

// SDKSampler is the sampler telemetry.Setup gives its TracerProvider: the
// mesh's decision (RootSampler) for the application's own spans, except
// spans the mesh already decided to sample (it does not decide twice).
func SDKSampler(ratio float64, parentBased bool) sdktrace.Sampler {
	var root sdktrace.Sampler
	switch {
	case ratio >= 1:
		root = sdktrace.AlwaysSample()
	case ratio > 0:
		root = sdktrace.TraceIDRatioBased(ratio)
	default:
		root = sdktrace.NeverSample()
	}
	if parentBased {
		return sdktrace.ParentBased(meshRoot{root})
	}
	return meshRoot{root}
}

type meshRoot struct{ sdktrace.Sampler }

func (m meshRoot) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	if p.ParentContext != nil && p.ParentContext.Value(meshSampledKey{}) != nil {
		return sdktrace.SamplingResult{Decision: sdktrace.RecordAndSample, Tracestate: trace.SpanContextFromContext(p.ParentContext).TraceState()}
	}
	return m.Sampler.ShouldSample(p)
}

func (m meshRoot) Description() string { return "MeshRoot{" + m.Sampler.Description() + "}" }

// IDGenerator is the span and trace ID generator telemetry.Setup gives
// its TracerProvider: lock-free (the SDK's default takes a mutex per
// span), and a root span the mesh decided to sample gets the trace ID the
// decision was taken on. Safe for concurrent use.
func IDGenerator() sdktrace.IDGenerator { return idGenerator{} }

type idGenerator struct{}

func (idGenerator) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	tid, ok := ctx.Value(meshSampledKey{}).(trace.TraceID)
	for !ok || tid == (trace.TraceID{}) {
		binary.BigEndian.PutUint64(tid[:8], rand.Uint64())
		binary.BigEndian.PutUint64(tid[8:], rand.Uint64())
		ok = true
	}
	return tid, newSpanID()
}

func (idGenerator) NewSpanID(context.Context, trace.TraceID) trace.SpanID { return newSpanID() }

func newSpanID() trace.SpanID {
	var sid trace.SpanID
	for sid == (trace.SpanID{}) {
		binary.BigEndian.PutUint64(sid[:], rand.Uint64())
	}
	return sid
}

// passthrough is the W3C context of an unsampled incoming call, kept as
// received so outgoing calls carry it unchanged.
type passthrough struct{ traceparent, tracestate string }

type passKey struct{}

// Incoming is what a server read of the caller's W3C headers.
type Incoming struct {
	Traceparent, Tracestate, Baggage string
}

// ServerStart decides whether a server call is traced. Sampled: ctx
// carries a new server span (the caller's as parent) with the attributes
// attrs returns (nil: none), and span is it. Not sampled: span is nil,
// attrs is not called, and ctx carries the caller's context as received,
// for outgoing calls. Baggage, when sent, is in ctx either way.
func (t *Tracing) ServerStart(ctx context.Context, in Incoming, name string, kind trace.SpanKind, attrs func() []attribute.KeyValue) (context.Context, trace.Span) {
	if in.Baggage != "" {
		if b, err := baggage.Parse(in.Baggage); err == nil {
			ctx = baggage.ContextWithBaggage(ctx, b)
		}
	}
	parent, ok := parseTraceparent(in.Traceparent)
	var sampled bool
	switch {
	case t == nil:
	case ok:
		sampled = t.decide(parent)
	case t.rootKnown:
		// Not sampled, this call sends nothing on: each of its outgoing
		// calls is a new trace (ClientDecision).
		var id trace.TraceID
		if id, sampled = t.rootID(); sampled {
			ctx = context.WithValue(ctx, meshSampledKey{}, id)
		}
	default:
		sampled = true // the provider's sampler decides
	}
	if !sampled {
		if ok {
			ctx = &passCtx{Context: ctx, p: passthrough{in.Traceparent, in.Tracestate}}
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
	var kvs []attribute.KeyValue
	if attrs != nil {
		kvs = attrs()
	}
	ctx, span := t.tracer.Start(ctx, name, trace.WithSpanKind(kind), trace.WithAttributes(kvs...))
	if !span.IsRecording() {
		return ctx, nil
	}
	return ctx, span
}

// passCtx is a context carrying a passthrough, in one allocation where
// context.WithValue and the value would take two.
type passCtx struct {
	context.Context
	p passthrough
}

func (c *passCtx) Value(key any) any {
	if key == (passKey{}) {
		return &c.p
	}
	return c.Context.Value(key)
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
		return t.decide(sc), ctx
	}
	if ctx.Value(passKey{}) != nil {
		// The incoming call was not sampled: by its parent's decision, or
		// by its trace ID, which decides the same here.
		return false, ctx
	}
	if !t.rootKnown {
		return true, ctx
	}
	return t.newRoot(ctx)
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

// unsampledTraceparent is a traceparent for trace id, not sampled, with
// a random parent span ID.
func unsampledTraceparent(id trace.TraceID) string {
	return FormatTraceparent(trace.NewSpanContext(trace.SpanContextConfig{TraceID: id, SpanID: newSpanID()}))
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
