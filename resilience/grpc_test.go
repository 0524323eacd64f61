package resilience_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/failsafe-go/failsafe-go/bulkhead"
	"github.com/failsafe-go/failsafe-go/circuitbreaker"
	"github.com/failsafe-go/failsafe-go/ratelimiter"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/gridmesh/gridmesh/resilience"
	"github.com/gridmesh/gridmesh/resilience/idempotency"
	"github.com/gridmesh/gridmesh/resilience/internal/ledgertest"
)

// A backend failing 100% at steady load: the budget keeps attempts within
// 1.2x the calls plus the floor, although each call may try 3 times. Once
// with a backend that answers UNAVAILABLE to reads, once with a dead one
// that refuses connections, where even writes are retried (never sent).
func TestRetryBudgetCapsAttemptsAgainstFailingBackend(t *testing.T) {
	tests := []struct {
		name   string
		method string
		target func(t testing.TB) string
	}{
		{"reads to a backend answering UNAVAILABLE", ledgertest.Get, func(t testing.TB) string {
			srv := ledgertest.Start(t)
			srv.SetMode(ledgertest.Unavailable)
			return srv.Addr
		}},
		{"writes to a dead backend", ledgertest.Apply, closedPort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := fastRetries(resilience.Default())
			p.Breaker = resilience.Breaker{} // measure the budget alone
			rc, ev := newClient(t, p)
			var attempts atomic.Int64
			conn := dial(t, "passthrough:///"+tt.target(t), rc, &attempts)
			ctx := testCtx(t, time.Minute)

			const calls = 3000
			failed := load(calls, 8, func(i int) error {
				_, err := ledgertest.Call(ctx, conn, tt.method, fmt.Sprint(i))
				return err
			})

			floor := p.Budget.MinPerSecond * p.Budget.Window.Seconds()
			limit := int64(1.2*calls + floor)
			t.Logf("calls=%d failed=%d attempts=%d ratio=%.3f limit=%d (1.2x+%v) retries=%d budget-denied=%d",
				calls, failed, attempts.Load(), float64(attempts.Load())/calls, limit, floor, ev.retries.Load(), ev.budget.Load())
			if failed != calls {
				t.Errorf("failed = %d, want all %d", failed, calls)
			}
			if got := attempts.Load(); got > limit || got <= calls {
				t.Errorf("attempts = %d, want in (%d, %d]: retries, but within the budget", got, calls, limit)
			}
			if ev.budget.Load() == 0 {
				t.Error("budget was never exhausted")
			}
		})
	}
}

// The breaker opens on a failing backend, rejects without sending, then
// half-opens and closes after the backend recovers.
func TestBreakerOpensHalfOpensAndClosesAfterRecovery(t *testing.T) {
	srv := ledgertest.Start(t)
	srv.SetMode(ledgertest.Unavailable)
	p := fastRetries(resilience.Default()) // default breaker: 5 consecutive, 3s open
	rc, ev := newClient(t, p)
	var attempts atomic.Int64
	target := "passthrough:///" + srv.Addr
	conn := dial(t, target, rc, &attempts)
	ctx := testCtx(t, time.Minute)

	// Steady load from 4 workers; the breaker opens early and then fails
	// the rest fast without sending them.
	const calls = 2000
	failed := load(calls, 4, func(int) error {
		_, err := ledgertest.Call(ctx, conn, ledgertest.Get, "x")
		return err
	})
	if st := rc.Describe(target, "").BreakerState; st != resilience.BreakerOpen {
		t.Fatalf("breaker %s after %d failing calls, want open", st, calls)
	}
	sent := attempts.Load()
	floor := p.Budget.MinPerSecond * p.Budget.Window.Seconds()
	t.Logf("calls=%d failed=%d attempts=%d ratio=%.3f rejected=%d (limit 1.2x+%v)", calls, failed, sent, float64(sent)/calls, ev.rejected.Load(), floor)
	if limit := int64(1.2*calls + floor); sent > limit {
		t.Errorf("attempts = %d, want <= %d", sent, limit)
	}
	// While open, calls fail fast with a RejectedError and are not sent.
	_, err := ledgertest.Call(ctx, conn, ledgertest.Get, "x")
	if !errors.Is(err, circuitbreaker.ErrOpen) || status.Code(err) != codes.Unavailable {
		t.Errorf("error while open = %v (code %v), want circuitbreaker.ErrOpen as UNAVAILABLE", err, status.Code(err))
	}
	if got := attempts.Load(); got != sent {
		t.Errorf("%d attempts sent while the breaker was open", got-sent)
	}

	srv.SetMode(ledgertest.Healthy)
	recovered := time.Now()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for rc.Describe(target, "").BreakerState != resilience.BreakerClosed {
		select {
		case <-ctx.Done():
			t.Fatalf("breaker still %s after recovery; transitions %v", rc.Describe(target, "").BreakerState, ev.states())
		case <-tick.C:
			_, _ = ledgertest.Call(ctx, conn, ledgertest.Get, "x")
		}
	}
	t.Logf("breaker closed %v after recovery", time.Since(recovered).Round(10*time.Millisecond))
	want := []string{"closed->open", "open->half-open", "half-open->closed"}
	if diff := cmp.Diff(want, ev.states()); diff != "" {
		t.Errorf("breaker transitions (-want +got):\n%s", diff)
	}
	if _, err := ledgertest.Call(ctx, conn, ledgertest.Get, "x"); err != nil {
		t.Errorf("call after recovery: %v", err)
	}
}

// Which attempts are retried after the server may have seen them: a table
// over idempotency declarations and keys against a backend that answers
// UNAVAILABLE after receiving the call.
func TestRetryOnlyIdempotentOrKeyedAfterSend(t *testing.T) {
	tests := []struct {
		name, method string
		key          bool
		override     resilience.Idempotency
		wantAttempts int64
	}{
		{name: "write", method: ledgertest.Apply, wantAttempts: 1},
		{name: "write with key", method: ledgertest.Apply, key: true, wantAttempts: 3},
		{name: "write declared idempotent in config", method: ledgertest.Apply, override: resilience.Idempotent, wantAttempts: 3},
		{name: "proto IDEMPOTENT", method: ledgertest.Put, wantAttempts: 3},
		{name: "proto NO_SIDE_EFFECTS", method: ledgertest.Get, wantAttempts: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := ledgertest.Start(t)
			srv.SetMode(ledgertest.Unavailable)
			p := fastRetries(resilience.Default())
			if tt.override != resilience.IdempotencyUnknown {
				p.Methods = map[string]resilience.MethodPolicy{tt.method: {Idempotency: tt.override}}
			}
			rc, _ := newClient(t, p)
			var attempts atomic.Int64
			conn := dial(t, "passthrough:///"+srv.Addr, rc, &attempts)
			ctx := testCtx(t, 10*time.Second)
			if tt.key {
				ctx = resilience.WithIdempotencyKey(ctx, "k1")
			}
			_, err := ledgertest.Call(ctx, conn, tt.method, "v")
			if status.Code(err) != codes.Unavailable {
				t.Errorf("error = %v, want UNAVAILABLE", err)
			}
			got := map[string]int64{"client": attempts.Load(), "server": srv.Attempts(tt.method)}
			want := map[string]int64{"client": tt.wantAttempts, "server": tt.wantAttempts}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("attempts (-want +got):\n%s", diff)
			}
		})
	}
}

// A write that never reached a server (connection refused) is retried.
func TestNeverSentWriteIsRetried(t *testing.T) {
	rc, ev := newClient(t, fastRetries(resilience.Default()))
	var attempts atomic.Int64
	conn := dial(t, "passthrough:///"+closedPort(t), rc, &attempts)
	_, err := ledgertest.Call(testCtx(t, 10*time.Second), conn, ledgertest.Apply, "v")
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("error = %v, want UNAVAILABLE", err)
	}
	got := map[string]int64{"attempts": attempts.Load(), "retries": ev.retries.Load()}
	if diff := cmp.Diff(map[string]int64{"attempts": 3, "retries": 2}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// A backend that commits and then drops the connection: with keys, 1000
// calls apply exactly 1000 times through retries; without keys (and no
// idempotent declaration) nothing is retried.
func TestDropAfterCommit(t *testing.T) {
	// A backend that drops every first response fails half the attempts:
	// the breaker would rightly open and the budget rightly stop retrying
	// most calls. Both are off so that every call goes through its retries.
	p := fastRetries(resilience.Default())
	p.Breaker = resilience.Breaker{}
	p.Budget = resilience.Budget{}
	const calls = 1000

	t.Run("with keys applied exactly once", func(t *testing.T) {
		ids := idempotency.NewServer(idempotency.NewMemoryStore(time.Hour), func(context.Context) string { return "spiffe://test/client" })
		srv := ledgertest.Start(t, grpc.ChainUnaryInterceptor(ids.UnaryServerInterceptor()))
		srv.SetMode(ledgertest.DropAfterCommit)
		rc, ev := newClient(t, p)
		var attempts atomic.Int64
		conn := dial(t, "passthrough:///"+srv.Addr, rc, &attempts)
		ctx := testCtx(t, 2*time.Minute)
		// One worker: a drop also kills the other calls on the connection,
		// which would then need more than 3 attempts.
		failed := load(calls, 1, func(i int) error {
			key := fmt.Sprintf("trade-%d", i)
			got, err := ledgertest.Call(resilience.WithIdempotencyKey(ctx, key), conn, ledgertest.Apply, key)
			if err == nil && got != "applied "+key {
				return fmt.Errorf("got %q", got)
			}
			return err
		})
		t.Logf("calls=%d failed=%d applied=%d attempts=%d retries=%d", calls, failed, srv.Applied(), attempts.Load(), ev.retries.Load())
		got := map[string]any{"failed": failed, "applied": srv.Applied(), "applied twice": srv.AppliedTwice()}
		want := map[string]any{"failed": int64(0), "applied": int64(calls), "applied twice": []string(nil)}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
		if attempts.Load() < 2*calls {
			t.Errorf("attempts = %d, want >= %d: every first response was dropped", attempts.Load(), 2*calls)
		}
	})

	t.Run("with keys concurrent", func(t *testing.T) {
		// Four workers: a drop also kills the neighbours' calls, before or
		// after their commit, so a call may run out of attempts; that is
		// chance (about 0.6 per attempt here). What must hold is that no
		// key is applied twice and every call that succeeded was applied.
		p := p
		p.Retry.MaxAttempts = 10
		ids := idempotency.NewServer(idempotency.NewMemoryStore(time.Hour), nil)
		srv := ledgertest.Start(t, grpc.ChainUnaryInterceptor(ids.UnaryServerInterceptor()))
		srv.SetMode(ledgertest.DropAfterCommit)
		rc, ev := newClient(t, p)
		var attempts atomic.Int64
		conn := dial(t, "passthrough:///"+srv.Addr, rc, &attempts)
		ctx := testCtx(t, 2*time.Minute)
		var succeeded sync.Map
		failed := load(calls, 4, func(i int) error {
			key := fmt.Sprintf("trade-%d", i)
			_, err := ledgertest.Call(resilience.WithIdempotencyKey(ctx, key), conn, ledgertest.Apply, key)
			if err == nil {
				succeeded.Store(key, true)
			}
			return err
		})
		t.Logf("calls=%d failed=%d applied=%d attempts=%d retries=%d", calls, failed, srv.Applied(), attempts.Load(), ev.retries.Load())
		if twice := srv.AppliedTwice(); len(twice) > 0 {
			t.Errorf("applied twice: %v", twice)
		}
		succeeded.Range(func(k, _ any) bool {
			if n := srv.AppliedCount(k.(string)); n != 1 {
				t.Errorf("%s succeeded but was applied %d times", k, n)
			}
			return true
		})
		if failed > calls/100 {
			t.Errorf("failed = %d, want <= %d", failed, calls/100)
		}
	})

	t.Run("without keys not retried", func(t *testing.T) {
		srv := ledgertest.Start(t)
		srv.SetMode(ledgertest.DropAfterCommit)
		rc, ev := newClient(t, p)
		var attempts atomic.Int64
		conn := dial(t, "passthrough:///"+srv.Addr, rc, &attempts)
		ctx := testCtx(t, 2*time.Minute)
		failed := load(calls, 1, func(i int) error {
			_, err := ledgertest.Call(ctx, conn, ledgertest.Apply, fmt.Sprint(i))
			if err != nil && status.Code(err) != codes.Unavailable {
				t.Errorf("call %d: %v, want UNAVAILABLE", i, err)
			}
			return err
		})
		t.Logf("calls=%d failed=%d applied=%d attempts=%d retries=%d", calls, failed, srv.Applied(), attempts.Load(), ev.retries.Load())
		got := map[string]int64{"failed": failed, "applied": srv.Applied(), "attempts": attempts.Load(), "retries": ev.retries.Load()}
		want := map[string]int64{"failed": calls, "applied": calls, "attempts": calls, "retries": 0}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})
}

// Hedged reads: the slow first copy is canceled when the hedge answers, and
// the call returns only after the loser has ended.
func TestHedgedReadCancelsLosers(t *testing.T) {
	srv := ledgertest.Start(t)
	p := resilience.Default()
	p.Hedge = resilience.Hedge{Delay: 20 * time.Millisecond}
	rc, ev := newClient(t, p)
	var attempts atomic.Int64
	conn := dial(t, "passthrough:///"+srv.Addr, rc, &attempts)
	ctx := testCtx(t, 30*time.Second)

	const calls = 20
	for i := range calls {
		v := fmt.Sprintf("%s%d", ledgertest.SlowFirstPrefix, i)
		got, err := ledgertest.Call(ctx, conn, ledgertest.Get, v)
		if err != nil || got != "got "+v {
			t.Fatalf("call %d = %q, %v; want %q", i, got, err, "got "+v)
		}
	}
	// The server learns of the cancel asynchronously (RST_STREAM).
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for srv.Canceled() < calls {
		select {
		case <-ctx.Done():
			t.Fatalf("server saw %d canceled losers, want %d", srv.Canceled(), calls)
		case <-tick.C:
		}
	}
	got := map[string]int64{"server attempts": srv.Attempts(ledgertest.Get), "hedges": ev.hedges.Load(), "canceled": srv.Canceled()}
	want := map[string]int64{"server attempts": 2 * calls, "hedges": calls, "canceled": calls}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// Writes are never hedged, with or without a key, IDEMPOTENT or not.
func TestWritesAreNeverHedged(t *testing.T) {
	tests := []struct {
		name, method string
		key          bool
	}{
		{"write", ledgertest.Apply, false},
		{"write with key", ledgertest.Apply, true},
		{"IDEMPOTENT", ledgertest.Put, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := ledgertest.Start(t)
			srv.SetMode(ledgertest.Block)
			p := resilience.Default()
			const delay = 5 * time.Millisecond
			p.Hedge = resilience.Hedge{Delay: delay, MaxHedges: 2}
			rc, ev := newClient(t, p)
			var attempts atomic.Int64
			conn := dial(t, "passthrough:///"+srv.Addr, rc, &attempts)
			ctx := testCtx(t, 10*time.Second)
			if tt.key {
				ctx = resilience.WithIdempotencyKey(ctx, "k")
			}
			done := make(chan error, 1)
			go func() {
				_, err := ledgertest.Call(ctx, conn, tt.method, "v")
				done <- err
			}()
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			for srv.Attempts(tt.method) == 0 {
				select {
				case <-ctx.Done():
					t.Fatal("call never reached the server")
				case <-tick.C:
				}
			}
			// Hold the call well past the hedge delays; a hedge would be sent by now.
			<-time.After(20 * delay)
			srv.Unblock()
			if err := <-done; err != nil {
				t.Fatalf("call: %v", err)
			}
			got := map[string]int64{"server attempts": srv.Attempts(tt.method), "hedges": ev.hedges.Load()}
			if diff := cmp.Diff(map[string]int64{"server attempts": 1, "hedges": 0}, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// The per-try timeout retries a slow read but not a slow write.
func TestPerTryTimeout(t *testing.T) {
	srv := ledgertest.Start(t)
	p := fastRetries(resilience.Default())
	p.Retry.PerTryTimeout = 50 * time.Millisecond
	rc, _ := newClient(t, p)
	var attempts atomic.Int64
	conn := dial(t, "passthrough:///"+srv.Addr, rc, &attempts)
	ctx := testCtx(t, 10*time.Second)

	v := ledgertest.SlowFirstPrefix + "per-try"
	if got, err := ledgertest.Call(ctx, conn, ledgertest.Get, v); err != nil || got != "got "+v {
		t.Errorf("read = %q, %v; want success on the retry", got, err)
	}
	srv.SetMode(ledgertest.Block)
	_, err := ledgertest.Call(ctx, conn, ledgertest.Apply, "w")
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("write error = %v, want DEADLINE_EXCEEDED", err)
	}
	got := map[string]int64{"reads": srv.Attempts(ledgertest.Get), "writes": srv.Attempts(ledgertest.Apply)}
	if diff := cmp.Diff(map[string]int64{"reads": 2, "writes": 1}, got); diff != "" {
		t.Errorf("attempts (-want +got):\n%s", diff)
	}
}

// The call's own timeout propagates to the server and is not retried.
func TestTimeoutPropagatesAndIsNotRetried(t *testing.T) {
	srv := ledgertest.Start(t)
	srv.SetMode(ledgertest.Block)
	p := fastRetries(resilience.Default())
	p.Timeout = 100 * time.Millisecond
	rc, _ := newClient(t, p)
	var attempts atomic.Int64
	conn := dial(t, "passthrough:///"+srv.Addr, rc, &attempts)
	_, err := ledgertest.Call(testCtx(t, 10*time.Second), conn, ledgertest.Put, "v")
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("error = %v, want DEADLINE_EXCEEDED", err)
	}
	if got := attempts.Load(); got != 1 {
		t.Errorf("attempts = %d, want 1", got)
	}
	if left, ok := srv.PutDeadline(); !ok || left <= 0 || left > p.Timeout {
		t.Errorf("server saw deadline %v (set %v), want one within the 100ms timeout", left, ok)
	}
}

// A full bulkhead refuses without sending, as RESOURCE_EXHAUSTED.
func TestBulkheadRejects(t *testing.T) {
	srv := ledgertest.Start(t)
	srv.SetMode(ledgertest.Block)
	p := resilience.Default()
	p.Bulkhead = resilience.Bulkhead{MaxConcurrent: 1}
	rc, ev := newClient(t, p)
	var attempts atomic.Int64
	conn := dial(t, "passthrough:///"+srv.Addr, rc, &attempts)
	ctx := testCtx(t, 10*time.Second)
	done := make(chan error, 1)
	go func() {
		_, err := ledgertest.Call(ctx, conn, ledgertest.Put, "first")
		done <- err
	}()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for srv.Attempts(ledgertest.Put) == 0 {
		select {
		case <-ctx.Done():
			t.Fatal("first call never reached the server")
		case <-tick.C:
		}
	}
	_, err := ledgertest.Call(ctx, conn, ledgertest.Put, "second")
	var re *resilience.RejectedError
	if !errors.As(err, &re) || !errors.Is(err, bulkhead.ErrFull) || status.Code(err) != codes.ResourceExhausted {
		t.Errorf("second call error = %v, want a RejectedError wrapping bulkhead.ErrFull as RESOURCE_EXHAUSTED", err)
	}
	srv.Unblock()
	if err := <-done; err != nil {
		t.Errorf("first call: %v", err)
	}
	if got := map[string]int64{"attempts": attempts.Load(), "rejected": ev.rejected.Load()}; !cmp.Equal(got, map[string]int64{"attempts": 1, "rejected": 1}) {
		t.Errorf("got %v, want 1 attempt sent and 1 rejected", got)
	}
}

// Streams get the breaker and are retried only when never sent.
func TestStreamNeverSentIsRetried(t *testing.T) {
	rc, ev := newClient(t, fastRetries(resilience.Default()))
	var attempts atomic.Int64
	conn := dial(t, "passthrough:///"+closedPort(t), rc, &attempts)
	desc := &grpc.StreamDesc{StreamName: "Apply", ServerStreams: true, ClientStreams: true}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := conn.NewStream(ctx, desc, ledgertest.Apply)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("NewStream error = %v, want UNAVAILABLE", err)
	}
	if got := ev.retries.Load(); got != 2 {
		t.Errorf("retries = %d, want 2", got)
	}
}

// Over the rate limit, calls are refused without being sent.
func TestRateLimitRejects(t *testing.T) {
	srv := ledgertest.Start(t)
	p := resilience.Default()
	p.RateLimit = resilience.RateLimit{Requests: 1, Per: time.Hour}
	rc, _ := newClient(t, p)
	var attempts atomic.Int64
	conn := dial(t, "passthrough:///"+srv.Addr, rc, &attempts)
	ctx := testCtx(t, 10*time.Second)
	if _, err := ledgertest.Call(ctx, conn, ledgertest.Get, "1"); err != nil {
		t.Fatalf("first call: %v", err)
	}
	_, err := ledgertest.Call(ctx, conn, ledgertest.Get, "2")
	if !errors.Is(err, ratelimiter.ErrExceeded) || status.Code(err) != codes.ResourceExhausted {
		t.Errorf("second call error = %v, want ratelimiter.ErrExceeded as RESOURCE_EXHAUSTED", err)
	}
	if got := srv.Attempts(ledgertest.Get); got != 1 {
		t.Errorf("server attempts = %d, want 1", got)
	}
}

// A stream holds its bulkhead slot until it ends, by EOF or by its context.
func TestStreamReleasesBulkheadWhenDone(t *testing.T) {
	srv := ledgertest.Start(t)
	p := resilience.Default()
	p.Bulkhead = resilience.Bulkhead{MaxConcurrent: 1}
	rc, _ := newClient(t, p)
	var attempts atomic.Int64
	conn := dial(t, "passthrough:///"+srv.Addr, rc, &attempts)
	ctx := testCtx(t, 10*time.Second)

	open := func(ctx context.Context) (grpc.ClientStream, error) {
		s, err := conn.NewStream(ctx, ledgertest.WatchDesc, ledgertest.Watch)
		if err != nil {
			return nil, err
		}
		if err := s.SendMsg(wrapperspb.String("w")); err != nil {
			return nil, err
		}
		return s, s.CloseSend()
	}
	for i := range 3 { // read to EOF: each stream frees the slot
		s, err := open(ctx)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		n := 0
		for {
			if err := s.RecvMsg(new(wrapperspb.StringValue)); err == io.EOF {
				break
			} else if err != nil {
				t.Fatalf("stream %d recv: %v", i, err)
			}
			n++
		}
		if n != 3 {
			t.Errorf("stream %d got %d messages, want 3", i, n)
		}
	}
	// A stream in use holds the slot; canceling it frees the slot.
	sctx, cancel := context.WithCancel(ctx)
	if _, err := open(sctx); err != nil {
		t.Fatal(err)
	}
	if _, err := open(ctx); !errors.Is(err, bulkhead.ErrFull) {
		t.Errorf("second concurrent stream: %v, want bulkhead.ErrFull", err)
	}
	cancel()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		s, err := open(ctx)
		if err == nil {
			for s.RecvMsg(new(wrapperspb.StringValue)) == nil {
			}
			break
		}
		if !errors.Is(err, bulkhead.ErrFull) {
			t.Fatalf("stream after cancel: %v", err)
		}
		select {
		case <-ctx.Done():
			t.Fatal("slot never freed after cancel")
		case <-tick.C:
		}
	}
}

// Regression: concurrent hedges appended their grpc.Peer option into the
// caller's CallOption slice when it had spare capacity (a data race).
func TestHedgesDoNotShareCallOptionsArray(t *testing.T) {
	srv := ledgertest.Start(t)
	p := resilience.Default()
	p.Hedge = resilience.Hedge{Delay: time.Millisecond, MaxHedges: 3}
	rc, _ := newClient(t, p)
	var attempts atomic.Int64
	conn := dial(t, "passthrough:///"+srv.Addr, rc, &attempts)
	ctx := testCtx(t, 10*time.Second)
	for i := range 5 {
		opts := make([]grpc.CallOption, 1, 8)
		opts[0] = grpc.WaitForReady(false)
		v := fmt.Sprintf("%sopts-%d", ledgertest.SlowFirstPrefix, i)
		if _, err := ledgertest.Call(ctx, conn, ledgertest.Get, v, opts...); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
}
