package discovery_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/internal/testutil/consul"
)

// TestDistributionPerPolicy sends 3,000 calls over three Consul-registered
// backends for each policy and logs the per-backend counts. round_robin
// must give each backend a third within 5 percentage points; the others
// must use every backend.
func TestDistributionPerPolicy(t *testing.T) {
	const calls = 3000
	tests := []struct {
		name     string
		balancer discovery.Balancer
		within   float64 // max deviation from 1/3 in percentage points; 0: only "every backend used"
	}{
		{"round_robin", discovery.Balancer{Policy: discovery.RoundRobin}, 5},
		{"least_request", discovery.Balancer{Policy: discovery.LeastRequest}, 0},
		{"weighted_round_robin without load reports", discovery.Balancer{Policy: discovery.WeightedRoundRobin}, 5},
		{"round_robin with outlier detection", discovery.Balancer{Outlier: &discovery.OutlierDetection{
			Interval: time.Second, FailurePercentage: &discovery.FailurePercentageEjection{EnforcementPercentage: 100},
		}}, 5},
		{"ring_hash with distinct keys", discovery.Balancer{Policy: discovery.RingHash, HashHeader: "x-market-id"}, 0},
	}
	f := consul.Start(t)
	reg, _ := newRegistry(t, f)
	bs := startBackends(t, 3)
	for _, b := range bs {
		registerBackend(t, reg, "trading", b)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			conn := dial(t, reg, "consul:///trading", tt.balancer)
			// Wait until every backend is connected, so the count measures the
			// policy and not connection start-up.
			seen := map[string]bool{}
			for i := 0; len(seen) < 3; i++ {
				if ctx.Err() != nil {
					t.Fatalf("only reached %v", seen)
				}
				name, err := call(ctx, conn, "warm-"+strconv.Itoa(i))
				if err != nil {
					t.Fatal(err)
				}
				seen[name] = true
			}
			counts := map[string]int{}
			for i := range calls {
				name, err := call(ctx, conn, "market-"+strconv.Itoa(i))
				if err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
				counts[name]++
			}
			t.Logf("%s: %d calls: b0=%d b1=%d b2=%d", tt.name, calls, counts["b0"], counts["b1"], counts["b2"])
			for _, b := range bs {
				share := 100 * float64(counts[b.name]) / calls
				if counts[b.name] == 0 {
					t.Errorf("%s got no calls", b.name)
				}
				if tt.within > 0 && (share < 100.0/3-tt.within || share > 100.0/3+tt.within) {
					t.Errorf("%s got %.1f%% of calls, want 33.3%% ± %.0f points", b.name, share, tt.within)
				}
			}
		})
	}
}

// TestRingHashSameKeySameBackend checks that a key always lands on the same
// backend and that removing a backend remaps only the keys it held.
func TestRingHashSameKeySameBackend(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f := consul.Start(t)
	reg, _ := newRegistry(t, f)
	bs := startBackends(t, 3)
	var regs []*discovery.Registration
	for _, b := range bs {
		regs = append(regs, registerBackend(t, reg, "trading", b))
	}
	conn := dial(t, reg, "consul:///trading", discovery.Balancer{Policy: discovery.RingHash, HashHeader: "x-market-id"})

	const keys = 300
	owner := map[string]string{}
	perBackend := map[string]int{}
	for i := range keys {
		key := fmt.Sprintf("market-%d", i)
		for range 5 {
			name, err := call(ctx, conn, key)
			if err != nil {
				t.Fatal(err)
			}
			if prev, ok := owner[key]; ok && prev != name {
				t.Fatalf("key %s went to %s and then %s", key, prev, name)
			}
			owner[key] = name
		}
		perBackend[owner[key]]++
	}
	t.Logf("ring_hash: %d keys x 5 calls: b0=%d b1=%d b2=%d keys", keys, perBackend["b0"], perBackend["b1"], perBackend["b2"])

	// Remove b1 and wait until its keys have moved.
	if err := regs[1].Close(); err != nil {
		t.Fatal(err)
	}
	var b1Key string
	for k, v := range owner {
		if v == "b1" {
			b1Key = k
			break
		}
	}
	if _, ok := pollUntil(5*time.Second, func() bool {
		name, err := call(ctx, conn, b1Key)
		return err == nil && name != "b1"
	}); !ok {
		t.Fatal("b1's keys still go to b1 after deregistration")
	}
	moved, kept := 0, 0
	for key, prev := range owner {
		name, err := call(ctx, conn, key)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case prev == "b1" && name == "b1":
			t.Errorf("key %s still reaches the removed backend", key)
		case prev == "b1":
			moved++
		case name != prev:
			t.Errorf("key %s moved from %s to %s though %s is still there", key, prev, name, prev)
		default:
			kept++
		}
	}
	t.Logf("ring_hash after removing b1: %d keys moved (all of b1's), %d kept", moved, kept)
}

// TestWeightedRoundRobinFollowsLoadReports: backends reporting application
// utilization 0.2, 0.4 and 0.8 at equal qps through ORCA get calls in the
// ratio 4:2:1 (57%, 29%, 14%).
func TestWeightedRoundRobinFollowsLoadReports(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f := consul.Start(t)
	reg, _ := newRegistry(t, f)
	utils := []float64{0.2, 0.4, 0.8}
	for i, u := range utils {
		registerBackend(t, reg, "trading", startBackendUtil(t, "b"+strconv.Itoa(i), u))
	}
	conn := dial(t, reg, "consul:///trading", discovery.Balancer{Policy: discovery.WeightedRoundRobin, Weighted: &discovery.WeightedConfig{
		BlackoutPeriod: 100 * time.Millisecond, WeightUpdatePeriod: 100 * time.Millisecond,
	}})
	// Warm up until the weights are in use: the last 300 calls of a window
	// favour b0 over b2 by at least 2:1.
	if _, ok := pollUntil(20*time.Second, func() bool {
		counts := map[string]int{}
		for i := range 300 {
			name, err := call(ctx, conn, "w"+strconv.Itoa(i))
			if err != nil {
				t.Fatal(err)
			}
			counts[name]++
		}
		return counts["b0"] >= 2*counts["b2"] && counts["b2"] > 0
	}); !ok {
		t.Fatal("weights never took effect")
	}
	const calls = 3000
	counts := map[string]int{}
	for range calls {
		name, err := call(ctx, conn, "")
		if err != nil {
			t.Fatal(err)
		}
		counts[name]++
	}
	t.Logf("weighted_round_robin, utilization 0.2/0.4/0.8: %d calls: b0=%d b1=%d b2=%d", calls, counts["b0"], counts["b1"], counts["b2"])
	want := []float64{400.0 / 7, 200.0 / 7, 100.0 / 7}
	for i, w := range want {
		name := "b" + strconv.Itoa(i)
		share := 100 * float64(counts[name]) / calls
		if share < w-7 || share > w+7 {
			t.Errorf("%s got %.1f%% of calls, want %.1f%% ± 7 points", name, share, w)
		}
	}
}

// TestOutlierDetectionEjectsFailingBackend: with failure-percentage outlier
// detection, a backend failing every call is ejected and the others take
// its share.
func TestOutlierDetectionEjectsFailingBackend(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f := consul.Start(t)
	reg, _ := newRegistry(t, f)
	bs := startBackends(t, 3)
	for _, b := range bs {
		registerBackend(t, reg, "trading", b)
	}
	bs[2].failing.Store(true)
	conn := dial(t, reg, "consul:///trading", discovery.Balancer{Outlier: &discovery.OutlierDetection{
		Interval: 200 * time.Millisecond, BaseEjectionTime: time.Minute, MaxEjectionPercent: 50,
		FailurePercentage: &discovery.FailurePercentageEjection{Threshold: 50, EnforcementPercentage: 100, MinimumHosts: 3, RequestVolume: 10},
	}})
	took, ok := pollUntil(20*time.Second, func() bool {
		failed := 0
		for i := range 60 {
			if _, err := call(ctx, conn, strconv.Itoa(i)); err != nil {
				failed++
			}
		}
		return failed == 0
	})
	if !ok {
		t.Fatal("failing backend never ejected")
	}
	const calls = 600
	counts, failed := map[string]int{}, 0
	for i := range calls {
		name, err := call(ctx, conn, strconv.Itoa(i))
		if err != nil {
			failed++
		}
		counts[name]++
	}
	t.Logf("outlier detection: ejected within %v; then %d calls: b0=%d b1=%d b2(failing)=%d, %d failed", took.Round(10*time.Millisecond), calls, counts["b0"], counts["b1"], counts["b2"], failed)
	if counts["b2"] != 0 || failed != 0 {
		t.Errorf("ejected backend got %d calls, %d failed", counts["b2"], failed)
	}
}
