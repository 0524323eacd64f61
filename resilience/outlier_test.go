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
	var srvs []*ledgertest.Server
	var addrs []resolver.Address
	for range 3 {
		s := ledgertest.Start(t)
		srvs = append(srvs, s)
		addrs = append(addrs, resolver.Address{Addr: s.Addr})
	}
	srvs[1].SetMode(ledgertest.Unavailable)

	r := manual.NewBuilderWithScheme("ledger")
	r.InitialState(resolver.State{Addresses: addrs})
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
