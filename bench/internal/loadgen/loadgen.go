// Package loadgen drives calls in a closed loop (a fixed number in flight)
// or an open loop (a fixed rate, latency measured from each call's intended
// send time, so a stalled server is not hidden by the generator waiting for
// it) and summarizes their latencies.
package loadgen

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Call makes one call; it must be safe for concurrent use.
type Call func(ctx context.Context) error

// Spec is one load point. Exactly one of Concurrency and Rate is set.
type Spec struct {
	// Concurrency is the number of calls in flight (closed loop).
	Concurrency int `json:"concurrency,omitempty"`
	// Rate is calls per second (open loop).
	Rate int `json:"rate,omitempty"`
	// Payload is the request and response payload size in bytes.
	Payload int `json:"payload"`
	// Duration is the measured window; Warmup runs before it, unmeasured.
	Duration time.Duration `json:"duration"`
	Warmup   time.Duration `json:"warmup"`
}

// Name is a short label: "c64/100B" or "r1000/1KB".
func (s Spec) Name() string {
	size := fmt.Sprintf("%dB", s.Payload)
	if s.Payload%1024 == 0 {
		size = fmt.Sprintf("%dKB", s.Payload/1024)
	}
	if s.Rate > 0 {
		return fmt.Sprintf("r%d/%s", s.Rate, size)
	}
	return fmt.Sprintf("c%d/%s", s.Concurrency, size)
}

// Result summarizes one measured window. Latencies are in microseconds.
type Result struct {
	Requests   int64   `json:"requests"`
	Errors     int64   `json:"errors"`
	FirstError string  `json:"first_error,omitempty"`
	Seconds    float64 `json:"seconds"`
	RPS        float64 `json:"rps"`
	P50        float64 `json:"p50_us"`
	P90        float64 `json:"p90_us"`
	P99        float64 `json:"p99_us"`
	P999       float64 `json:"p999_us"`
	Max        float64 `json:"max_us"`
	// Late counts open-loop calls sent more than 1ms after their intended
	// time because the generator had maxOutstanding calls in flight.
	Late int64 `json:"late,omitempty"`
}

// maxOutstanding bounds open-loop calls in flight so an overloaded target
// does not exhaust memory; calls held back still count from their
// intended send time.
const maxOutstanding = 4096

// Warm makes calls in a closed loop for d, unmeasured.
func Warm(ctx context.Context, call Call, concurrency int, d time.Duration) {
	if d <= 0 {
		return
	}
	closed(ctx, call, concurrency, d)
}

// Run measures one window of s (without s.Warmup; call Warm first).
func Run(ctx context.Context, call Call, s Spec) Result {
	if s.Rate > 0 {
		return open(ctx, call, s.Rate, s.Duration)
	}
	return closed(ctx, call, max(s.Concurrency, 1), s.Duration)
}

type errs struct {
	n     atomic.Int64
	once  sync.Once
	first string
}

func (e *errs) add(err error) {
	e.n.Add(1)
	e.once.Do(func() { e.first = err.Error() })
}

func closed(ctx context.Context, call Call, n int, d time.Duration) Result {
	var (
		wg   sync.WaitGroup
		e    errs
		lats = make([][]time.Duration, n)
	)
	start := time.Now()
	deadline := start.Add(d)
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := make([]time.Duration, 0, 4096)
			for {
				t0 := time.Now()
				if !t0.Before(deadline) || ctx.Err() != nil {
					break
				}
				if err := call(ctx); err != nil {
					e.add(err)
					continue
				}
				l = append(l, time.Since(t0))
			}
			lats[w] = l
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	return summarize(slices.Concat(lats...), &e, elapsed)
}

func open(ctx context.Context, call Call, rate int, d time.Duration) Result {
	total := int(int64(rate) * int64(d) / int64(time.Second))
	interval := time.Second / time.Duration(rate)
	var (
		wg   sync.WaitGroup
		e    errs
		late atomic.Int64
		sem  = make(chan struct{}, maxOutstanding)
		lats = make([]time.Duration, total)
		ok   = make([]bool, total)
	)
	start := time.Now()
	for i := 0; i < total && ctx.Err() == nil; i++ {
		intended := start.Add(time.Duration(i) * interval)
		if wait := time.Until(intended); wait > 0 {
			time.Sleep(wait)
		}
		sem <- struct{}{}
		if time.Since(intended) > time.Millisecond {
			late.Add(1)
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := call(ctx); err != nil {
				e.add(err)
				return
			}
			lats[i] = time.Since(intended)
			ok[i] = true
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	got := make([]time.Duration, 0, total)
	for i, l := range lats {
		if ok[i] {
			got = append(got, l)
		}
	}
	r := summarize(got, &e, elapsed)
	r.Late = late.Load()
	return r
}

func summarize(lats []time.Duration, e *errs, elapsed time.Duration) Result {
	slices.Sort(lats)
	us := func(q float64) float64 {
		if len(lats) == 0 {
			return 0
		}
		i := int(q * float64(len(lats)))
		i = min(i, len(lats)-1)
		return float64(lats[i]) / float64(time.Microsecond)
	}
	r := Result{
		Requests: int64(len(lats)),
		Errors:   e.n.Load(),
		Seconds:  elapsed.Seconds(),
		P50:      us(0.50),
		P90:      us(0.90),
		P99:      us(0.99),
		P999:     us(0.999),
		Max:      us(1),
	}
	if r.Errors > 0 {
		r.FirstError = e.first
	}
	if elapsed > 0 {
		r.RPS = float64(r.Requests) / elapsed.Seconds()
	}
	return r
}
