package main

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gridmesh/gridmesh/bench/internal/loadgen"
)

func TestParseBenchmarks(t *testing.T) {
	out := []byte(`goos: linux
BenchmarkUnary/mesh/100B-2         	    2000	     56351 ns/op	   11662 B/op	     170 allocs/op
BenchmarkAuthorize/unary/allow-all-2   	 3000000	       360.2 ns/op	      64 B/op	       1 allocs/op
PASS
`)
	want := []benchmark{
		{Name: "BenchmarkUnary/mesh/100B-2", N: 2000, Metrics: map[string]float64{"ns/op": 56351, "B/op": 11662, "allocs/op": 170}},
		{Name: "BenchmarkAuthorize/unary/allow-all-2", N: 3000000, Metrics: map[string]float64{"ns/op": 360.2, "B/op": 64, "allocs/op": 1}},
	}
	if diff := cmp.Diff(want, parseBenchmarks(out)); diff != "" {
		t.Errorf("parseBenchmarks (-want +got):\n%s", diff)
	}
}

// The headline figures are medians over rounds, and the targets compare
// the mesh with b and the sidecar as issue 9 states them.
func TestFinishMediansAndTargets(t *testing.T) {
	fixed := loadgen.Spec{Rate: 1000, Payload: 100}
	closed := loadgen.Spec{Concurrency: 64, Payload: 100}
	m := func(p50, p99, rps, cpu float64) measurement {
		return measurement{Result: loadgen.Result{P50: p50, P99: p99, RPS: rps}, CPUPerReq: cpu}
	}
	sc := func(name string, p50, p99, rps, cpu float64) *scenarioResult {
		s := &scenarioResult{Name: name}
		// Three rounds; the middle one is the median, the others are off
		// either way.
		for _, k := range []float64{1.5, 1, 0.5} {
			s.add(fixed, m(p50*k, p99*k, 1000, cpu*k))
			s.add(closed, m(0, 0, rps*k, cpu*k))
		}
		return s
	}
	r := &result{Scenarios: []*scenarioResult{
		sc("a-plain", 100, 200, 40000, 30),
		sc("b-tls", 110, 220, 36000, 32),
		sc("c-full", 120, 250, 30000, 36),
		sc("d-sidecar", 300, 600, 14000, 80),
	}}
	r.finish()
	if got := r.Scenarios[2].Summary.P50; got != 120 {
		t.Errorf("c-full p50 = %v, want the median 120", got)
	}
	got := map[string]bool{}
	for _, tg := range r.Targets {
		got[tg.Goal] = tg.Met
	}
	want := map[string]bool{
		"c-full vs b: p50 at 1,000/s within +15%":                                                             true, // +9%
		"c-full vs b: p99 at 1,000/s within +20%":                                                             true, // +14%
		"c-full vs b: CPU per request at 1,000/s within +25%":                                                 true, // +12.5%
		"c-full vs b: max throughput at least 80%":                                                            true, // 83%
		"c-full vs d-sidecar: p50 the mesh adds over b at least 5x smaller than what the sidecar adds over a": true, // +10µs vs +200µs: 20x
		"c-full vs d-sidecar: max throughput at least 2x":                                                     true, // 2.14x
		"c-full vs d-sidecar: CPU per request (at 1,000/s) at least 2x lower":                                 true, // 2.2x
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("targets (-want +got):\n%s", diff)
	}
}

// Issue 17's targets, for gRPC and HTTP, each met or missed by the
// figures given (CPU per request at the maximum throughput point).
func TestIssue17Targets(t *testing.T) {
	s := func(p99, rps, cpuMax float64) *summary {
		return &summary{P99: p99, MaxRPS: rps, CPUPerReqMax: cpuMax}
	}
	by := map[string]*summary{
		"b-tls":       s(100, 10000, 40),
		"b-tls-3":     s(100, 9000, 45),
		"c-nootel":    s(110, 8200, 50), // 0.91x of b-tls-3: met
		"c-full":      s(300, 5000, 90), // 0.50x: missed; more rps than d (4000), more CPU (80)
		"c-full-1pct": s(120, 8100, 52), // 0.81x, 1.20x, 1.30x: all met
		"d-sidecar":   s(200, 4000, 80),
		"h-b-tls":     s(100, 8000, 50),
		"h-c-nootel":  s(100, 7000, 55), // 0.875x: missed
	}
	got := map[string]bool{}
	for _, tg := range issue17Targets(by) {
		got[tg.Goal] = tg.Met
	}
	want := map[string]bool{
		"gRPC c-full-1pct vs b-tls: max throughput >= 0.80x":                 true,
		"gRPC c-full-1pct vs b-tls: p99 at 1,000/s <= 1.25x":                 true,
		"gRPC c-full-1pct vs b-tls: CPU per request at the maximum <= 1.30x": true,
		"gRPC c-full vs b-tls: max throughput >= 0.55x":                      false,
		"gRPC c-full vs d-sidecar: more max throughput":                      true,
		"gRPC c-full vs d-sidecar: less CPU per request at the maximum":      false,
		"gRPC c-nootel vs b-tls-3: max throughput >= 0.90x":                  true,
		"HTTP h-c-nootel vs h-b-tls: max throughput >= 0.90x":                false,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("issue 17 targets (-want +got):\n%s", diff)
	}
}
