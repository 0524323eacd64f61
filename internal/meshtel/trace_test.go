package meshtel_test

import (
	"context"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/gridmesh/gridmesh/internal/meshtel"
)

// rootRatio is an SDK provider that says how it samples, as
// telemetry.Setup's does.
type rootRatio struct {
	*sdktrace.TracerProvider
	ratio       float64
	parentBased bool
}

func (r rootRatio) MeshSampling() (float64, bool) { return r.ratio, r.parentBased }

func newTracing(t *testing.T, ratio float64) (*meshtel.Tracing, *tracetest.SpanRecorder) {
	return newSampledTracing(t, ratio, true)
}

// newSampledTracing builds the provider and Tracing telemetry.Setup would
// for ratio and parentBased.
func newSampledTracing(t *testing.T, ratio float64, parentBased bool) (*meshtel.Tracing, *tracetest.SpanRecorder) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(meshtel.SDKSampler(ratio, parentBased)),
		sdktrace.WithIDGenerator(meshtel.IDGenerator()))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	return meshtel.NewTracing(rootRatio{tp, ratio, parentBased}), rec
}

// TestUnsampledCallPassesContextUnchanged: a server whose caller did not
// sample starts no span and allocates none, and what its outgoing calls
// carry is the caller's traceparent and tracestate, byte for byte.
func TestUnsampledCallPassesContextUnchanged(t *testing.T) {
	tr, rec := newTracing(t, 1)
	in := meshtel.Incoming{
		Traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
		Tracestate:  "vendor=opaque,other=x",
	}
	ctx, span := tr.ServerStart(context.Background(), in, "m", trace.SpanKindServer, nil)
	if span != nil {
		t.Fatal("unsampled parent: server span started")
	}
	if sampled, _ := tr.ClientDecision(ctx); sampled {
		t.Error("outgoing call of an unsampled call sampled")
	}
	tp, ts, ok := meshtel.Outgoing(ctx)
	if !ok || tp != in.Traceparent || ts != in.Tracestate {
		t.Errorf("outgoing %q %q %v, want %q %q", tp, ts, ok, in.Traceparent, in.Tracestate)
	}
	if n := len(rec.Started()); n != 0 {
		t.Errorf("%d spans started, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() {
		tr.ServerStart(context.Background(), meshtel.Incoming{Traceparent: in.Traceparent}, "m", trace.SpanKindServer, nil)
	}); n > 1 {
		t.Errorf("%v allocations to pass an unsampled context on, want at most 1 (the context)", n)
	}
}

// TestSampledParentFollowed: a sampled caller's trace is continued, with
// the caller's span as parent.
func TestSampledParentFollowed(t *testing.T) {
	tr, _ := newTracing(t, 0.0001) // new traces almost never: the parent decides
	in := meshtel.Incoming{Traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
	_, span := tr.ServerStart(context.Background(), in, "m", trace.SpanKindServer, nil)
	if span == nil {
		t.Fatal("sampled parent: no server span")
	}
	span.End()
	ro := span.(sdktrace.ReadOnlySpan)
	if got := ro.Parent().SpanID().String(); got != "00f067aa0ba902b7" {
		t.Errorf("parent span %s, want 00f067aa0ba902b7", got)
	}
	if got := ro.SpanContext().TraceID().String(); got != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("trace %s, want the caller's", got)
	}
}

// TestRootRatio: with ratio 0 no new trace is sampled, and the unsampled
// trace the mesh starts is still sent on, so hops downstream follow the
// decision; with ratio 1 every new trace is.
func TestRootRatio(t *testing.T) {
	never, _ := newTracing(t, 0)
	for range 100 {
		sampled, ctx := never.ClientDecision(context.Background())
		if sampled {
			t.Fatal("ratio 0 sampled a new trace")
		}
		tp, _, ok := meshtel.Outgoing(ctx)
		if !ok || len(tp) != 55 || tp[53:] != "00" {
			t.Fatalf("outgoing traceparent %q, want a new unsampled one", tp)
		}
	}
	always, rec := newTracing(t, 1)
	sampled, ctx := always.ClientDecision(context.Background())
	if !sampled {
		t.Fatal("ratio 1 did not sample a new trace")
	}
	_, span := always.Start(ctx, "m", trace.SpanKindClient)
	if span == nil || !span.SpanContext().IsSampled() {
		t.Fatal("the SDK did not follow the mesh's decision")
	}
	span.End()
	if n := len(rec.Ended()); n != 1 {
		t.Errorf("%d spans, want 1", n)
	}
}

// TestMalformedTraceparentIgnored: a traceparent that is not W3C's is a
// new trace, not a parent.
func TestMalformedTraceparentIgnored(t *testing.T) {
	tr, _ := newTracing(t, 0)
	for _, tp := range []string{
		"", "junk", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0", // short
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01",       // zero trace
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",       // zero span
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",       // version ff
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",       // upper case
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", // version 00 with more
	} {
		ctx, span := tr.ServerStart(context.Background(), meshtel.Incoming{Traceparent: tp}, "m", trace.SpanKindServer, nil)
		if span != nil {
			t.Errorf("%q: sampled at ratio 0", tp)
		}
		if got, _, ok := meshtel.Outgoing(ctx); ok {
			t.Errorf("%q: passed on as %q", tp, got)
		}
	}
}
