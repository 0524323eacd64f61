// Package consulwatch runs a Consul blocking query in a loop: it carries the
// index from one answer to the next query following Consul's documented
// rules, and retries with capped, jittered exponential backoff while the
// agent cannot be reached. discovery uses it for health and intention
// watches.
package consulwatch

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff bounds the wait between failed queries. Zero fields take the
// defaults: Min 100ms, Max 500ms. The agent is normally on loopback, so
// two failed queries a second cost nothing, and a restarted agent is read
// again within about half a second of its return.
type Backoff struct {
	Min, Max time.Duration
}

func (b Backoff) withDefaults() Backoff {
	if b.Min <= 0 {
		b.Min = 100 * time.Millisecond
	}
	if b.Max <= 0 {
		b.Max = 500 * time.Millisecond
	}
	if b.Max < b.Min {
		b.Max = b.Min
	}
	return b
}

// Delay is the wait before retry number attempt (1 for the first retry):
// Min doubling per attempt up to Max, with ±20% jitter.
func (b Backoff) Delay(attempt int) time.Duration {
	b = b.withDefaults()
	d := b.Min
	for i := 1; i < attempt && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	jitter := time.Duration(rand.Int64N(int64(d)/5+1)) * 2
	return d - d/5 + jitter
}

// NextIndex is the index to send with the next query after an answer with
// index got to a query that sent prev, by Consul's rules: an index that went
// backwards resets to 0 (a fresh, non-blocking read); an index below 1 is
// treated as 1 so the next query blocks.
func NextIndex(prev, got uint64) uint64 {
	switch {
	case got < prev:
		return 0
	case got < 1:
		return 1
	default:
		return got
	}
}

// QueryTimeout is how long a client should let a blocking query that asks
// Consul to wait up to wait run before giving up on it: Consul answers
// within wait plus up to wait/16 of jitter, and 2s more covers the trip. A
// Fetch that bounds its query so turns an agent that stops answering (a
// partition, a frozen process: the connection stays open) into a failed
// query, which Run reports and retries, instead of a query that hangs
// until TCP gives up on the connection, minutes later.
func QueryTimeout(wait time.Duration) time.Duration {
	return wait + wait/16 + 2*time.Second
}

// Fetch performs one blocking query that waits for an index greater than
// index and returns the answer's index. It must return when ctx ends.
type Fetch func(ctx context.Context, index uint64) (uint64, error)

// Hooks report the loop's state changes. Nil fields are skipped. They run on
// the loop's goroutine.
type Hooks struct {
	// OnError runs after a failed query, before waiting retryIn. attempt
	// counts consecutive failures from 1.
	OnError func(err error, attempt int, retryIn time.Duration)
	// OnRecover runs after the first successful query following failures.
	OnRecover func()
}

// Run calls fetch in a loop until ctx ends. A value on poke cuts a backoff
// wait short (a ResolveNow). Run blocks; it returns ctx.Err().
func Run(ctx context.Context, b Backoff, fetch Fetch, h Hooks, poke <-chan struct{}) error {
	var index uint64
	attempt := 0
	for {
		got, err := fetch(ctx, index)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			attempt++
			wait := b.Delay(attempt)
			if h.OnError != nil {
				h.OnError(err, attempt, wait)
			}
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-poke:
				t.Stop()
			case <-t.C:
			}
			continue
		}
		if attempt > 0 && h.OnRecover != nil {
			h.OnRecover()
		}
		attempt = 0
		index = NextIndex(index, got)
	}
}
