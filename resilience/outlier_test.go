package resilience_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	_ "google.golang.org/grpc/xds" // registers outlier_detection_experimental

	"github.com/gridmesh/gridmesh/resilience"
	"github.com/gridmesh/gridmesh/resilience/internal/ledgertest"
)

// One of three backends failing: grpc-go's outlier detection ejects it and
// retries cover the calls that hit it before; success stays >= 99.9%.
func TestOneOfThreeFailingOutlierEjectionAndRetries(t *testing.T) {
	srvs, r := ledgerBackends(t, 3)
	srvs[1].SetMode(ledgertest.Unavailable)
	const serviceConfig = `{"loadBalancingConfig": [{"outlier_detection_experimental": {
		"interval": "0.1s",
		"baseEjectionTime": "30s",
		"maxEjectionPercent": 50,
		"failurePercentageEjection": {"threshold": 50, "enforcementPercentage": 100, "minimumHosts": 3, "requestVolume": 10},
		"childPolicy": [{"round_robin": {}}]
	}}]}`

	rc, ev := newClient(t, resilience.Default())
	var attempts atomic.Int64
	conn := dial(t, "ledger:///three", rc, &attempts,
		grpc.WithResolvers(r), grpc.WithDefaultServiceConfig(serviceConfig))
	ctx := testCtx(t, 2*time.Minute)

	const calls = 5000
	failed := load(calls, 4, func(i int) error {
		_, err := ledgertest.Call(ctx, conn, ledgertest.Get, fmt.Sprint(i))
		return err
	})
	rate := float64(calls-failed) / calls
	t.Logf("calls=%d failed=%d success=%.4f attempts=%d retries=%d budget-denied=%d per-backend=[%d %d(failing) %d]",
		calls, failed, rate, attempts.Load(), ev.retries.Load(), ev.budget.Load(),
		srvs[0].Attempts(ledgertest.Get), srvs[1].Attempts(ledgertest.Get), srvs[2].Attempts(ledgertest.Get))
	if rate < 0.999 {
		t.Errorf("success rate = %.4f, want >= 0.999", rate)
	}
	if bad := srvs[1].Attempts(ledgertest.Get); bad > calls/10 {
		t.Errorf("failing backend got %d attempts, want it ejected (<= %d)", bad, calls/10)
	}
}

// One bad endpoint must not shut the destination: without outlier
// detection, half of the attempts fail against one of two backends, but
// calls whose retry reached the good one did not fail, and the breaker
// (failed calls in a row, or 50% of calls) stays closed. Judged by
// attempts it would open at once and refuse the good backend too.
func TestOneBadEndpointDoesNotOpenTheBreaker(t *testing.T) {
	for _, backends := range []int{2, 3} {
		t.Run(fmt.Sprintf("1 of %d failing", backends), func(t *testing.T) {
			srvs, r := ledgerBackends(t, backends)
			srvs[0].SetMode(ledgertest.Unavailable)

			p := fastRetries(resilience.Default())
			p.Budget.Ratio = 1 // let every call retry: this test is about the breaker
			rc, ev := newClient(t, p)
			var attempts atomic.Int64
			target := "ledger:///two"
			conn := dial(t, target, rc, &attempts,
				grpc.WithResolvers(r), grpc.WithDefaultServiceConfig(`{"loadBalancingConfig": [{"round_robin": {}}]}`))
			ctx := testCtx(t, time.Minute)

			const calls = 1000
			failed := load(calls, 4, func(i int) error {
				_, err := ledgertest.Call(ctx, conn, ledgertest.Get, fmt.Sprint(i))
				return err
			})
			bad := srvs[0].Attempts(ledgertest.Get)
			t.Logf("calls=%d failed=%d attempts=%d to the failing backend=%d rejected=%d transitions=%v",
				calls, failed, attempts.Load(), bad, ev.rejected.Load(), ev.states())
			if st := rc.Describe(target, "").BreakerState; st != resilience.BreakerClosed {
				t.Errorf("breaker %s, want closed: one bad endpoint of %d shut the destination (transitions %v)", st, backends, ev.states())
			}
			if n := ev.rejected.Load(); n != 0 {
				t.Errorf("%d attempts refused locally, want 0", n)
			}
			// Round robin under four workers sends a retry to the bad
			// backend again about 1/n of the time: about (1/n)^3 of the
			// calls fail, 12.5% at n=2.
			if failed > calls/4 {
				t.Errorf("%d of %d calls failed, want <= %d: retries reach the good backends", failed, calls, calls/4)
			}
			if bad < calls/int64(backends)/2 {
				t.Errorf("failing backend got %d attempts; the test needs it in the rotation", bad)
			}
		})
	}
}

// ledgerBackends starts n ledger servers and a resolver for the scheme
// "ledger" that lists them all.
func ledgerBackends(t *testing.T, n int) ([]*ledgertest.Server, *manual.Resolver) {
	var srvs []*ledgertest.Server
	var addrs []resolver.Address
	for range n {
		s := ledgertest.Start(t)
		srvs = append(srvs, s)
		addrs = append(addrs, resolver.Address{Addr: s.Addr})
	}
	r := manual.NewBuilderWithScheme("ledger")
	r.InitialState(resolver.State{Addresses: addrs})
	return srvs, r
}
