package kubernetes_test

import (
	"context"
	"testing"
	"time"
)

// TestEndpointsFollowEndpointSlices: a Service with three ready endpoints
// gets calls on all three; scaled to two, the removed one gets no new
// calls; a not-ready one gets none; a terminating one gets none while its
// calls in flight finish; and with no ready endpoint left the serving
// terminating ones get calls, as kube-proxy does.
func TestEndpointsFollowEndpointSlices(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	e := startEnv(t)
	ws := e.startWorkloads(t, []string{"p1", "p2", "p3"}, []string{"10.244.0.11", "10.244.0.12", "10.244.0.13"},
		[]string{saID(ns, "trading"), saID(ns, "trading"), saID(ns, "trading")})
	for _, p := range []string{"p1", "p2", "p3"} {
		e.createPod(ctx, t, p, "trading", map[string]string{"app": "trading"})
	}
	port := ws[0].port
	e.createService(ctx, t, "trading", port, nil)
	e.applySlice(ctx, t, sliceFor("trading", "trading-1", port,
		readyEP("p1", "10.244.0.11"), readyEP("p2", "10.244.0.12"), readyEP("p3", "10.244.0.13")))

	c := e.dial(t, "trading.shop", saID(ns, "frontend"))
	waitServedBy(ctx, t, c, "p1", "p2", "p3")

	t.Run("scale to two", func(t *testing.T) {
		accepted := applyAt(ctx, t, e, sliceFor("trading", "trading-1", port,
			readyEP("p1", "10.244.0.11"), readyEP("p2", "10.244.0.12")))
		took := waitNotServedBy(ctx, t, c, accepted, "p3")
		t.Logf("p3 got its last call %v after the API server accepted the change", took)
		before := ws[2].hits.Load()
		got := countCalls(ctx, t, c, 200)
		if ws[2].hits.Load() != before || got["p3"] != 0 {
			t.Errorf("removed endpoint p3 got calls: %v", got)
		}
		if got["p1"] == 0 || got["p2"] == 0 {
			t.Errorf("calls %v, want both p1 and p2", got)
		}
	})

	t.Run("not ready", func(t *testing.T) {
		accepted := applyAt(ctx, t, e, sliceFor("trading", "trading-1", port,
			readyEP("p1", "10.244.0.11"), ep{pod: "p2", ip: "10.244.0.12"}))
		took := waitNotServedBy(ctx, t, c, accepted, "p2")
		t.Logf("p2 got its last call %v after the API server accepted the change", took)
		if got := countCalls(ctx, t, c, 200); got["p1"] != 200 {
			t.Errorf("calls %v, want all 200 on p1", got)
		}
	})

	t.Run("terminating drains", func(t *testing.T) {
		e.applySlice(ctx, t, sliceFor("trading", "trading-1", port,
			readyEP("p1", "10.244.0.11"), readyEP("p2", "10.244.0.12")))
		waitServedBy(ctx, t, c, "p1", "p2")
		// A call in flight on p1 when it starts terminating.
		release := make(chan struct{})
		ws[0].hold.Store(&release)
		inflight := make(chan error, 1)
		go func() {
			xctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			for {
				id, err := call(xctx, c)
				if err != nil || id == "p1" {
					inflight <- err
					return
				}
			}
		}()
		select {
		case <-ws[0].started:
		case <-ctx.Done():
			t.Fatal("no call reached p1")
		}
		accepted := applyAt(ctx, t, e, sliceFor("trading", "trading-1", port,
			ep{pod: "p1", ip: "10.244.0.11", serving: true, terminating: true}, readyEP("p2", "10.244.0.12")))
		took := waitNotServedBy(ctx, t, c, accepted, "p1")
		t.Logf("terminating p1 got its last new call %v after the API server accepted the change", took)
		close(release)
		if err := <-inflight; err != nil {
			t.Errorf("the call in flight on terminating p1 failed: %v", err)
		}

		// No ready endpoint: the serving terminating one takes the calls.
		e.applySlice(ctx, t, sliceFor("trading", "trading-1", port,
			ep{pod: "p1", ip: "10.244.0.11", serving: true, terminating: true}, ep{pod: "p2", ip: "10.244.0.12"}))
		waitServedBy(ctx, t, c, "p1")
		waitNotServedBy(ctx, t, c, time.Now(), "p2")
	})
}
