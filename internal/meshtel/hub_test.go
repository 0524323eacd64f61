package meshtel_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/gridmesh/gridmesh/internal/meshtel"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func histogram(t *testing.T, h *meshtel.Hub, name string) []metricdata.HistogramDataPoint[float64] {
	t.Helper()
	sms, err := h.Produce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, sm := range sms {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m.Data.(metricdata.Histogram[float64]).DataPoints
			}
		}
	}
	return nil
}

// TestHistogramBucketPlacement: a duration lands in the first bucket whose
// upper bound is at or above it, an exact bound included (the semantic
// conventions' and Prometheus' "le"), beyond the last bound in +Inf; the
// sum is exact.
func TestHistogramBucketPlacement(t *testing.T) {
	cases := []struct {
		d      time.Duration
		bucket int // index into BucketCounts
	}{
		{0, 0},
		{50 * time.Microsecond, 0},
		{100 * time.Microsecond, 0}, // == 0.0001
		{101 * time.Microsecond, 1},
		{time.Millisecond, 3},
		{1500 * time.Microsecond, 4},
		{time.Second, 12},
		{10 * time.Second, 15},
		{11 * time.Second, 16}, // +Inf
	}
	for _, tc := range cases {
		t.Run(tc.d.String(), func(t *testing.T) {
			h := meshtel.NewHub()
			h.RPCServer.Series(meshtel.Key{Method: "m", Status: "OK"}).Observe(tc.d, trace.SpanContext{})
			dps := histogram(t, h, "rpc.server.call.duration")
			if len(dps) != 1 {
				t.Fatalf("%d data points, want 1", len(dps))
			}
			want := make([]uint64, len(meshtel.Bounds)+1)
			want[tc.bucket] = 1
			if diff := cmp.Diff(want, dps[0].BucketCounts); diff != "" {
				t.Errorf("buckets (-want +got):\n%s", diff)
			}
			if dps[0].Count != 1 || dps[0].Sum != tc.d.Seconds() {
				t.Errorf("count %d sum %g, want 1 and %g", dps[0].Count, dps[0].Sum, tc.d.Seconds())
			}
			if diff := cmp.Diff(meshtel.Bounds, dps[0].Bounds); diff != "" {
				t.Errorf("bounds (-want +got):\n%s", diff)
			}
		})
	}
}

// TestExemplarLinksBucketToSampledTrace: a sampled call becomes its
// bucket's exemplar with its trace and span IDs; an unsampled one does not.
func TestExemplarLinksBucketToSampledTrace(t *testing.T) {
	h := meshtel.NewHub()
	s := h.RPCClient.Series(meshtel.Key{Method: "m", Status: "OK"})
	sampled := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: trace.FlagsSampled})
	unsampled := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{3}, SpanID: trace.SpanID{4}})
	s.Observe(2*time.Millisecond, sampled)    // bucket 4 (<= 2.5ms)
	s.Observe(20*time.Millisecond, unsampled) // bucket 7, no exemplar
	dps := histogram(t, h, "rpc.client.call.duration")
	if len(dps) != 1 || len(dps[0].Exemplars) != 1 {
		t.Fatalf("data points %+v, want one with one exemplar", dps)
	}
	e := dps[0].Exemplars[0]
	got := fmt.Sprintf("%g %x %x", e.Value, e.TraceID, e.SpanID)
	tid, sid := trace.TraceID{1}, trace.SpanID{2}
	if want := fmt.Sprintf("%g %x %x", 0.002, tid[:], sid[:]); got != want {
		t.Errorf("exemplar %s, want %s", got, want)
	}
}

// TestSeriesBounded: past MaxSeries label sets, calls go to one overflow
// series instead of growing the metric.
func TestSeriesBounded(t *testing.T) {
	h := meshtel.NewHub()
	for i := range meshtel.MaxSeries + 500 {
		h.HTTPServer.Series(meshtel.Key{Method: "GET", Route: fmt.Sprint("/r", i), Code: 200}).Observe(time.Millisecond, trace.SpanContext{})
	}
	if n := h.HTTPServer.Len(); n != meshtel.MaxSeries {
		t.Errorf("%d series, want the bound %d", n, meshtel.MaxSeries)
	}
	dps := histogram(t, h, "http.server.request.duration")
	var overflow uint64
	for _, dp := range dps {
		if v, ok := dp.Attributes.Value("otel.metric.overflow"); ok && v.AsBool() {
			overflow = dp.Count
		}
	}
	if overflow != 500 {
		t.Errorf("overflow series counted %d calls, want 500", overflow)
	}
}

// TestRecordingAllocatesNothing: once a series exists, finding it and
// recording a call allocates nothing.
func TestRecordingAllocatesNothing(t *testing.T) {
	h := meshtel.NewHub()
	k := meshtel.Key{Method: "pkg.S/M", Status: "OK", Source: "spiffe://example.org/a", Destination: "spiffe://example.org/b", Target: "static:///x"}
	h.RPCClient.Series(k)
	if n := testing.AllocsPerRun(1000, func() {
		h.RPCClient.Series(k).Observe(time.Millisecond, trace.SpanContext{})
		h.RPCAttempts.Series(k).Add()
	}); n != 0 {
		t.Errorf("%v allocations per recorded call, want 0", n)
	}
}
