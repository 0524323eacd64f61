package loadgen_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gridmesh/gridmesh/bench/internal/loadgen"
)

func TestSpecName(t *testing.T) {
	tests := []struct {
		spec loadgen.Spec
		want string
	}{
		{loadgen.Spec{Concurrency: 64, Payload: 100}, "c64/100B"},
		{loadgen.Spec{Rate: 1000, Payload: 1024}, "r1000/1KB"},
		{loadgen.Spec{Concurrency: 1, Payload: 1000}, "c1/1000B"},
	}
	for _, tt := range tests {
		if got := tt.spec.Name(); got != tt.want {
			t.Errorf("%+v.Name() = %q, want %q", tt.spec, got, tt.want)
		}
	}
}

func TestClosedLoopKeepsConcurrencyInFlight(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var inFlight, peak atomic.Int64
	call := func(context.Context) error {
		n := inFlight.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(time.Millisecond)
		inFlight.Add(-1)
		return nil
	}
	r := loadgen.Run(ctx, call, loadgen.Spec{Concurrency: 4, Duration: 100 * time.Millisecond})
	if peak.Load() != 4 {
		t.Errorf("peak in flight = %d, want 4", peak.Load())
	}
	if r.Requests == 0 || r.Errors != 0 {
		t.Errorf("requests %d, errors %d: want some requests and no errors", r.Requests, r.Errors)
	}
}

// A stalled server must show in open-loop latency: every call waits for a
// gate that opens 100ms in, so calls meant to go out at 0-50ms have waited
// 50-100ms from their intended send time, however quickly the generator
// itself got to them.
func TestOpenLoopMeasuresFromIntendedSendTime(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	gate := make(chan struct{})
	time.AfterFunc(100*time.Millisecond, func() { close(gate) })
	call := func(context.Context) error { <-gate; return nil }
	r := loadgen.Run(ctx, call, loadgen.Spec{Rate: 1000, Duration: 50 * time.Millisecond})
	if r.Requests != 50 {
		t.Errorf("requests = %d, want 50 (1,000/s for 50ms)", r.Requests)
	}
	if r.P50 < 40_000 {
		t.Errorf("p50 = %.0fµs, want at least 40ms: the wait for the gate is not counted from the intended send time", r.P50)
	}
	if r.Max < 90_000 {
		t.Errorf("max = %.0fµs, want at least 90ms (the first call waited ~100ms)", r.Max)
	}
}

func TestErrorsAreCountedNotTimed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var n atomic.Int64
	call := func(context.Context) error {
		if n.Add(1)%2 == 0 {
			return errors.New("boom")
		}
		return nil
	}
	r := loadgen.Run(ctx, call, loadgen.Spec{Rate: 1000, Duration: 20 * time.Millisecond})
	got := struct{ Requests, Errors int64 }{r.Requests, r.Errors}
	want := struct{ Requests, Errors int64 }{10, 10}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	if r.FirstError != "boom" {
		t.Errorf("FirstError = %q, want %q", r.FirstError, "boom")
	}
}
