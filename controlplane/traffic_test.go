package controlplane_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/controlplane"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
)

func oneService(s controlplane.Service) *controlplane.Config {
	s.Name = "trading"
	return &controlplane.Config{Services: []controlplane.Service{s}}
}

func TestFaultAbortFiftyPercent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ca := newMeshCA(t)
	m := xdstest.StartMeshd(t, "", withMTLS(oneService(controlplane.Service{Routes: []controlplane.Route{{
		Name:  "chaos",
		Fault: &controlplane.Fault{Abort: &controlplane.AbortFault{Code: "UNAVAILABLE", Percent: 50}},
	}}})))
	b := meshBackend(t, m, ca, xdstest.BackendOptions{Name: "b1", Service: "trading"})
	c := meshCaller(t, m.Addr, "trading", ca)
	waitServedBy(ctx, t, c, "b1")

	const n = 2000
	before := b.Hits.Load()
	aborted := 0
	for range n {
		_, err := call(ctx, c)
		switch status.Code(err) {
		case codes.OK:
		case codes.Unavailable:
			aborted++
		default:
			t.Fatalf("call: %v", err)
		}
	}
	pct := 100 * float64(aborted) / n
	t.Logf("%d of %d calls aborted (%.1f%%)", aborted, n, pct)
	if pct < 45 || pct > 55 {
		t.Errorf("aborted %.1f%%, want 50%% ± 5", pct)
	}
	if reached := b.Hits.Load() - before; reached != int64(n-aborted) {
		t.Errorf("%d calls reached the backend, want %d: aborted calls must not", reached, n-aborted)
	}
}

func TestFaultDelayShowsInLatency(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const delay = 200 * time.Millisecond
	ca := newMeshCA(t)
	m := xdstest.StartMeshd(t, "", withMTLS(oneService(controlplane.Service{Routes: []controlplane.Route{{
		Name:  "slow-unary",
		Match: controlplane.Match{Method: "/grpc.testing.TestService/UnaryCall"},
		Fault: &controlplane.Fault{Delay: &controlplane.DelayFault{Duration: delay, Percent: 100}},
	}}})))
	meshBackend(t, m, ca, xdstest.BackendOptions{Name: "b1", Service: "trading"})
	c := meshCaller(t, m.Addr, "trading", ca)
	waitServedBy(ctx, t, c, "b1")

	for range 5 {
		start := time.Now()
		if _, err := call(ctx, c); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d < delay {
			t.Errorf("delayed UnaryCall took %v, want at least %v", d, delay)
		}
		start = time.Now()
		if _, err := c.EmptyCall(ctx, &testgrpc.Empty{}); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d >= delay {
			t.Errorf("EmptyCall (no fault route) took %v, want under %v", d, delay)
		}
	}
}

func TestRetryPolicyRetriesUnavailable(t *testing.T) {
	tests := []struct {
		name      string
		retry     *controlplane.RetryPolicy
		wantFails bool
	}{
		{"no retry policy", nil, true},
		{"retry unavailable twice", &controlplane.RetryPolicy{On: []string{"unavailable"}, Attempts: 2, BaseInterval: 5 * time.Millisecond}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			ca := newMeshCA(t)
			m := xdstest.StartMeshd(t, "", withMTLS(oneService(controlplane.Service{Retry: tt.retry})))
			b := meshBackend(t, m, ca, xdstest.BackendOptions{Name: "b1", Service: "trading"})
			c := meshCaller(t, m.Addr, "trading", ca)
			waitServedBy(ctx, t, c, "b1")
			// Two of every three attempts fail.
			var n atomic.Int64
			b.SetBehavior(func(context.Context) error {
				if n.Add(1)%3 != 0 {
					return status.Error(codes.Unavailable, "flaky")
				}
				return nil
			})
			fails := 0
			for range 30 {
				if _, err := call(ctx, c); err != nil {
					fails++
				}
			}
			if got := fails > 0; got != tt.wantFails {
				t.Errorf("%d of 30 calls failed; want failures: %v", fails, tt.wantFails)
			}
		})
	}
}

func TestTimeoutCutsSlowCalls(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ca := newMeshCA(t)
	m := xdstest.StartMeshd(t, "", withMTLS(oneService(controlplane.Service{Timeout: 100 * time.Millisecond})))
	b := meshBackend(t, m, ca, xdstest.BackendOptions{Name: "b1", Service: "trading"})
	c := meshCaller(t, m.Addr, "trading", ca)
	waitServedBy(ctx, t, c, "b1")
	b.SetBehavior(func(ctx context.Context) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
			return nil
		}
	})
	start := time.Now()
	_, err := call(ctx, c)
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("slow call: %v, want DEADLINE_EXCEEDED", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("slow call ended after %v; the 100ms timeout did not cut it", d)
	}
}

func TestCircuitBreakerCapsConcurrentCalls(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ca := newMeshCA(t)
	m := xdstest.StartMeshd(t, "", withMTLS(oneService(controlplane.Service{CircuitBreaker: &controlplane.CircuitBreaker{MaxRequests: 2}})))
	b := meshBackend(t, m, ca, xdstest.BackendOptions{Name: "b1", Service: "trading"})
	c := meshCaller(t, m.Addr, "trading", ca)
	waitServedBy(ctx, t, c, "b1")

	release := make(chan struct{})
	var inHandler atomic.Int64
	b.SetBehavior(func(ctx context.Context) error {
		inHandler.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	})
	done := make(chan error, 2)
	for range 2 {
		go func() { _, err := call(ctx, c); done <- err }()
	}
	xdstest.WaitFor(ctx, t, "two calls in flight", func() error {
		if inHandler.Load() < 2 {
			return xdstest.ErrNotYet
		}
		return nil
	})
	_, err := call(ctx, c)
	if status.Code(err) != codes.Unavailable {
		t.Errorf("third concurrent call: %v, want UNAVAILABLE from the circuit breaker", err)
	}
	close(release)
	for range 2 {
		if err := <-done; err != nil {
			t.Errorf("call in flight: %v", err)
		}
	}
	if _, err := call(ctx, c); err != nil {
		t.Errorf("call after the others finished: %v", err)
	}
}

func TestOutlierDetectionEjectsFailingEndpoint(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ca := newMeshCA(t)
	m := xdstest.StartMeshd(t, "", withMTLS(oneService(controlplane.Service{OutlierDetection: &controlplane.OutlierDetection{
		Interval:                100 * time.Millisecond,
		BaseEjectionTime:        30 * time.Second,
		MaxEjectionPercent:      50,
		FailurePercentThreshold: 50,
		MinimumHosts:            3,
		RequestVolume:           5,
	}})))
	for _, name := range []string{"good-1", "good-2"} {
		meshBackend(t, m, ca, xdstest.BackendOptions{Name: name, Service: "trading"})
	}
	bad := meshBackend(t, m, ca, xdstest.BackendOptions{Name: "bad", Service: "trading"})
	bad.SetBehavior(func(context.Context) error { return status.Error(codes.Internal, "broken") })
	c := meshCaller(t, m.Addr, "trading", ca)
	waitServedBy(ctx, t, c, "good-1")

	// Once the bad endpoint is ejected, 60 calls in a row succeed.
	xdstest.WaitFor(ctx, t, "bad endpoint ejected", func() error {
		for range 60 {
			if _, err := call(ctx, c); err != nil {
				return err
			}
		}
		return nil
	})
}

// TestBadConfigRefusedTrafficKeepsFlowing edits the watched config file
// into something invalid: meshd must refuse it, keep its version, and
// calls must keep succeeding; the next good edit applies.
func TestBadConfigRefusedTrafficKeepsFlowing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	path := t.TempDir() + "/meshd.yaml"
	good := "mtls: true\nservices:\n  - name: trading\n    versions: [{name: v1}, {name: v2}]\n    routes:\n      - version: v1\n"
	writeFile(t, path, good)
	m := xdstest.StartMeshd(t, "", nil)
	if err := m.LoadConfigFile(path); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	watchDone := make(chan struct{})
	go func() { defer close(watchDone); _ = m.WatchConfigFile(wctx, path, 20*time.Millisecond) }()
	defer func() { wcancel(); <-watchDone }()

	ca := newMeshCA(t)
	meshBackend(t, m, ca, xdstest.BackendOptions{Name: "v1", Service: "trading", Version: "v1"})
	meshBackend(t, m, ca, xdstest.BackendOptions{Name: "v2", Service: "trading", Version: "v2"})
	c := meshCaller(t, m.Addr, "trading", ca)
	waitServedBy(ctx, t, c, "v1")

	var failed, total atomic.Int64
	var lastErr atomic.Pointer[error]
	lctx, lcancel := context.WithCancel(ctx)
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		for lctx.Err() == nil {
			cctx, ccancel := context.WithTimeout(lctx, 2*time.Second)
			_, err := call(cctx, c)
			ccancel()
			if err != nil && lctx.Err() == nil {
				failed.Add(1)
				lastErr.Store(&err)
			}
			total.Add(1)
		}
	}()

	version := m.Version()
	rejections := m.Stats().Rejections
	writeFile(t, path, good+"      - split: [{version: v3, weight: 10}]\n")
	xdstest.WaitFor(ctx, t, "bad edit refused", func() error {
		if m.Stats().Rejections == rejections {
			return xdstest.ErrNotYet
		}
		return nil
	})
	if got := m.Version(); got != version {
		t.Errorf("version moved from %s to %s after a bad edit", version, got)
	}
	n := total.Load()
	xdstest.WaitFor(ctx, t, "more calls after the bad edit", func() error {
		if total.Load() < n+200 {
			return xdstest.ErrNotYet
		}
		return nil
	})
	writeFile(t, path, "mtls: true\nservices:\n  - name: trading\n    versions: [{name: v1}, {name: v2}]\n    routes:\n      - version: v2\n")
	waitServedBy(ctx, t, c, "v2")
	lcancel()
	<-loopDone
	if f := failed.Load(); f != 0 {
		t.Errorf("%d of %d calls failed around the bad edit (last: %v), want 0", f, total.Load(), *lastErr.Load())
	}
}

// TestMeshdDownTwentySeconds kills meshd for 20 seconds under load: no call
// may fail; after it returns (on the same addresses), servers re-register
// and a new endpoint is applied.
func TestMeshdDownTwentySeconds(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 20 seconds")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	ca := newMeshCA(t)
	cfg := withMTLS(oneService(controlplane.Service{}))
	m1 := xdstest.StartMeshd(t, "", cfg)
	b1 := meshBackend(t, m1, ca, xdstest.BackendOptions{Name: "b1", Service: "trading"})
	hbCtx, hbCancel := context.WithCancel(ctx)
	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		reg := registrationFor("trading", b1.Addr, 3*time.Second)
		reg.SPIFFEID = serviceID("trading")
		_ = registrationClient(m1).Heartbeat(hbCtx, reg, nil)
	}()
	defer func() { hbCancel(); <-hbDone }()
	c := meshCaller(t, m1.Addr, "trading", ca)
	waitServedBy(ctx, t, c, "b1")

	var failed, total atomic.Int64
	var lastErr atomic.Pointer[error]
	lctx, lcancel := context.WithCancel(ctx)
	loopDone := make(chan struct{})
	seen := map[string]int{}
	go func() {
		defer close(loopDone)
		for lctx.Err() == nil {
			cctx, ccancel := context.WithTimeout(lctx, 2*time.Second)
			id, err := call(cctx, c)
			ccancel()
			if err != nil && lctx.Err() == nil {
				failed.Add(1)
				lastErr.Store(&err)
			}
			seen[id]++
			total.Add(1)
			time.Sleep(2 * time.Millisecond) // pace the load, not a wait for state
		}
	}()

	m1.Stop()
	select {
	case <-time.After(20 * time.Second): // the outage itself is the test
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	duringOutage := total.Load()
	m2 := xdstest.StartMeshdOn(t, m1.Addr, m1.HTTPAddr, cfg, controlplane.WithStartupGrace(2*time.Second))
	b2 := meshBackend(t, m2, ca, xdstest.BackendOptions{Name: "b2", Service: "trading"})
	_ = b2
	xdstest.WaitFor(ctx, t, "new endpoint b2 gets calls", func() error {
		if b2.Hits.Load() < 10 {
			return xdstest.ErrNotYet
		}
		return nil
	})
	lcancel()
	<-loopDone
	t.Logf("%d calls, %d during the outage, per backend %v", total.Load(), duringOutage, seen)
	if f := failed.Load(); f != 0 {
		t.Errorf("%d of %d calls failed (last: %v), want 0", f, total.Load(), *lastErr.Load())
	}
	if b1.Hits.Load() == 0 {
		t.Error("b1 got no calls")
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Error("test ran out of time")
	}
}

// TestRouteMovedToAnotherVersionFailsNoCall is the regression test for
// "unknown cluster selected for RPC": grpc-go swaps in a route table before
// the balancer of a newly named cluster exists, so moving a route to a
// version no route named failed calls until meshd kept every version's
// cluster named (warmRoute).
func TestRouteMovedToAnotherVersionFailsNoCall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ca := newMeshCA(t)
	m := xdstest.StartMeshd(t, "", withMTLS(twoVersions(controlplane.Route{Version: "v1"})))
	meshBackend(t, m, ca, xdstest.BackendOptions{Name: "v1", Service: "trading", Version: "v1"})
	meshBackend(t, m, ca, xdstest.BackendOptions{Name: "v2", Service: "trading", Version: "v2"})
	c := meshCaller(t, m.Addr, "trading", ca)
	waitServedBy(ctx, t, c, "v1")

	var failed atomic.Int64
	var lastErr atomic.Pointer[error]
	lctx, lcancel := context.WithCancel(ctx)
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		for lctx.Err() == nil {
			if _, err := call(lctx, c); err != nil && lctx.Err() == nil {
				failed.Add(1)
				lastErr.Store(&err)
			}
		}
	}()
	for range 3 {
		for _, v := range []string{"v2", "v1"} {
			if err := m.SetConfig("test", withMTLS(twoVersions(controlplane.Route{Version: v}))); err != nil {
				t.Fatal(err)
			}
			waitServedBy(ctx, t, c, v)
		}
	}
	lcancel()
	<-loopDone
	if f := failed.Load(); f != 0 {
		t.Errorf("%d calls failed while the route moved (last: %v), want 0", f, *lastErr.Load())
	}
}
