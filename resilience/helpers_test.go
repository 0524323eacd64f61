package resilience_test

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/gridmesh/gridmesh/resilience"
)

// newClient returns a resilience client for p with an event recorder.
func newClient(t testing.TB, p resilience.Policy) (*resilience.Client, *events) {
	t.Helper()
	ev := &events{}
	rc, err := resilience.NewClient(resilience.Config{Default: p}, resilience.WithObserver(ev.observer()))
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	return rc, ev
}

// dial connects to target through rc; attempts counts the attempts that
// left the resilience interceptor.
func dial(t testing.TB, target string, rc *resilience.Client, attempts *atomic.Int64, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	counting := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		attempts.Add(1)
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	opts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDisableRetry(),
		grpc.WithChainUnaryInterceptor(rc.UnaryClientInterceptor(), counting),
		grpc.WithChainStreamInterceptor(rc.StreamClientInterceptor()),
	}, opts...)
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		t.Fatalf("grpc.NewClient(%q): %v", target, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// events records what the Observer reported.
type events struct {
	retries, hedges, budget, rejected atomic.Int64

	mu          sync.Mutex
	transitions []string
}

func (e *events) observer() resilience.Observer {
	return resilience.Observer{
		OnRetry:           func(resilience.RetryEvent) { e.retries.Add(1) },
		OnHedge:           func(resilience.HedgeEvent) { e.hedges.Add(1) },
		OnBudgetExhausted: func(resilience.BudgetEvent) { e.budget.Add(1) },
		OnRejected:        func(resilience.RejectedEvent) { e.rejected.Add(1) },
		OnBreakerStateChange: func(b resilience.BreakerEvent) {
			e.mu.Lock()
			e.transitions = append(e.transitions, string(b.From)+"->"+string(b.To))
			e.mu.Unlock()
		},
	}
}

func (e *events) states() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.transitions...)
}

// testCtx is a context that ends with the test or after d.
func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// fastRetries is Default with short backoffs, so that tests that make
// thousands of failing calls finish quickly. The rules are unchanged.
func fastRetries(p resilience.Policy) resilience.Policy {
	p.Retry.InitialBackoff = time.Millisecond
	p.Retry.MaxBackoff = 4 * time.Millisecond
	return p
}

// load runs calls of fn on workers goroutines and returns how many failed.
func load(calls, workers int, fn func(i int) error) (failed int64) {
	var next, fails atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= calls {
					return
				}
				if fn(i) != nil {
					fails.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return fails.Load()
}
