package kubernetes_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
)

// outage is how long the API server is down in TestAPIServerOutage.
const outage = 30 * time.Second

// TestAPIServerOutage: with the API server stopped for 30 seconds under
// load, no call fails (meshd keeps serving what it last read); when it is
// back, the informers list again without pushing anything (nothing
// changed), and a change made then is applied.
func TestAPIServerOutage(t *testing.T) {
	ctx := testCtx(t, 4*time.Minute)
	e := startEnv(t)
	ws := e.startWorkloads(t, []string{"p1", "p2", "p3"}, []string{"10.244.0.31", "10.244.0.32", "10.244.0.33"},
		[]string{saID(ns, "trading"), saID(ns, "trading"), saID(ns, "trading")})
	for _, p := range []string{"p1", "p2", "p3"} {
		e.createPod(ctx, t, p, "trading", nil)
	}
	port := ws[0].port
	e.createService(ctx, t, "trading", port, nil)
	e.applySlice(ctx, t, sliceFor("trading", "trading-1", port,
		readyEP("p1", "10.244.0.31"), readyEP("p2", "10.244.0.32"), readyEP("p3", "10.244.0.33")))
	c := e.dial(t, "trading.shop", saID(ns, "frontend"))
	waitServedBy(ctx, t, c, "p1", "p2", "p3")

	// Load: four callers until the end of the test.
	var calls, failed atomic.Int64
	var firstErr atomic.Pointer[error]
	lctx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for lctx.Err() == nil {
				_, err := call(lctx, c)
				if lctx.Err() != nil {
					return
				}
				calls.Add(1)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, &err)
				}
			}
		}()
	}
	defer func() { stopLoad(); wg.Wait() }()

	before := e.src.Stats()
	pushes := e.meshd.Stats().Pushes
	version := e.meshd.Version()
	e.api.StopAPIServer(t)
	stopped := time.Now()
	select {
	case <-time.After(outage): // the outage itself, not a wait for state
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	e.api.StartAPIServer(t)
	back := time.Now()
	t.Logf("API server down %v; %d calls so far, %d failed", time.Since(stopped).Round(time.Second), calls.Load(), failed.Load())

	// The informers list again: every object (three pods, the Service,
	// its EndpointSlice) comes back unchanged. Each informer watches again
	// from its list, so once all five are back every informer is.
	const objects = 5
	xdstest.WaitFor(ctx, t, "informers relist", func() error {
		if n := e.src.Stats().Unchanged - before.Unchanged; n < objects {
			return fmt.Errorf("%d of %d objects re-delivered", n, objects)
		}
		return nil
	})
	t.Logf("informers listed again %v after the API server was back", time.Since(back).Round(100*time.Millisecond))
	after := e.src.Stats()
	if after.Updates != before.Updates {
		t.Errorf("the relist handed meshd %d updates, want none (nothing changed)", after.Updates-before.Updates)
	}
	if got := e.meshd.Stats().Pushes; got != pushes {
		t.Errorf("the outage and relist pushed %d xDS responses, want none", got-pushes)
	}
	if got := e.meshd.Version(); got != version {
		t.Errorf("snapshot version %s after the relist, want %s unchanged", got, version)
	}

	// A change after the API server is back is applied.
	accepted := applyAt(ctx, t, e, sliceFor("trading", "trading-1", port, readyEP("p1", "10.244.0.31"), readyEP("p2", "10.244.0.32")))
	waitNotServedBy(ctx, t, c, accepted, "p3")

	stopLoad()
	wg.Wait()
	t.Logf("%d calls under load, %d failed", calls.Load(), failed.Load())
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of %d calls failed during the outage; first: %v", n, calls.Load(), *firstErr.Load())
	}
	if calls.Load() == 0 {
		t.Error("no calls were made")
	}
}
