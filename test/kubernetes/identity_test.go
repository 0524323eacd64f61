package kubernetes_test

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestExpectedIdentityFollowsServiceAccount: meshd expects each endpoint
// to present its pod's service account's SPIFFE ID. A server at an
// endpoint whose pod runs under service account trading, but which
// presents intruder's ID, is refused by the client's handshake and gets
// no call; once that pod is recreated under service account intruder,
// intruder's ID is expected and the server gets calls.
func TestExpectedIdentityFollowsServiceAccount(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	e := startEnv(t)
	ws := e.startWorkloads(t, []string{"p1", "p2"}, []string{"10.244.0.21", "10.244.0.22"},
		[]string{saID(ns, "trading"), saID(ns, "intruder")})
	e.createPod(ctx, t, "p1", "trading", nil)
	e.createPod(ctx, t, "p2", "trading", nil) // its server presents intruder's ID
	port := ws[0].port
	e.createService(ctx, t, "trading", port, nil)
	e.applySlice(ctx, t, sliceFor("trading", "trading-1", port, readyEP("p1", "10.244.0.21"), readyEP("p2", "10.244.0.22")))

	c := e.dial(t, "trading.shop", saID(ns, "frontend"))
	waitServedBy(ctx, t, c, "p1")
	if got := countCalls(ctx, t, c, 200); got["p1"] != 200 {
		t.Errorf("calls %v, want all 200 on p1", got)
	}
	if n := ws[1].hits.Load(); n != 0 {
		t.Errorf("p2, presenting another service account's ID than its pod's, got %d calls", n)
	}

	// The pod of p2 runs under intruder now: its ID is the expected one.
	if err := e.admin.CoreV1().Pods(ns).Delete(ctx, "p2", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	e.createPod(ctx, t, "p2", "intruder", nil)
	waitServedBy(ctx, t, c, "p1", "p2")
}
