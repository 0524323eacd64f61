package httpbalance_test

import (
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gridmesh/gridmesh/internal/httpbalance"
)

func eps(addrs ...string) []httpbalance.Endpoint {
	var out []httpbalance.Endpoint
	for _, a := range addrs {
		out = append(out, httpbalance.Endpoint{Addr: a})
	}
	return out
}

func TestRoundRobinCycles(t *testing.T) {
	b := httpbalance.New(httpbalance.Config{})
	b.Update(eps("a", "b", "c"))
	got := map[string]int{}
	for range 300 {
		p, err := b.Pick(nil)
		if err != nil {
			t.Fatal(err)
		}
		got[p.Addr]++
		p.Done()
	}
	if diff := cmp.Diff(map[string]int{"a": 100, "b": 100, "c": 100}, got); diff != "" {
		t.Errorf("picks (-want +got):\n%s", diff)
	}
}

func TestLeastRequestAvoidsBusyEndpoint(t *testing.T) {
	b := httpbalance.New(httpbalance.Config{Policy: httpbalance.LeastRequest, Choices: 3})
	b.Update(eps("a", "b", "c"))
	var held []*httpbalance.Pick
	for range 30 { // make a busy
		p, _ := b.Pick([]string{"b", "c"})
		held = append(held, p)
	}
	for range 100 {
		p, err := b.Pick(nil)
		if err != nil {
			t.Fatal(err)
		}
		if p.Addr == "a" {
			t.Fatal("least request picked the endpoint with 30 requests in flight")
		}
		p.Done()
	}
	for _, p := range held {
		p.Done()
	}
}

func TestEjectionSkipsAndRecovers(t *testing.T) {
	now := time.Unix(0, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	b := httpbalance.New(httpbalance.Config{Now: clock})
	b.Update(eps("a", "b"))
	p, _ := b.Pick([]string{"b"})
	p.Failed()
	p.Done()
	for range 10 {
		p, _ := b.Pick(nil)
		if p.Addr == "a" {
			t.Fatal("ejected endpoint picked")
		}
		p.Done()
	}
	// Every other candidate tried: the ejected one is still offered.
	if p, err := b.Pick([]string{"b"}); err != nil || p.Addr != "a" {
		t.Fatalf("Pick excluding b = %v, %v; want a (panic mode)", p, err)
	}
	advance(1100 * time.Millisecond)
	seen := map[string]bool{}
	for range 4 {
		p, _ := b.Pick(nil)
		seen[p.Addr] = true
		p.Done()
	}
	if !seen["a"] {
		t.Error("endpoint not back after its ejection ended")
	}
	if _, err := b.Pick([]string{"a", "b"}); err == nil {
		t.Error("Pick with every endpoint tried succeeded")
	}
}

func TestUpdateKeepsState(t *testing.T) {
	b := httpbalance.New(httpbalance.Config{})
	b.Update(eps("a", "b"))
	if removed := b.Update(eps("a", "b", "c")); removed {
		t.Error("adding reported a removal")
	}
	if removed := b.Update(eps("b", "c")); !removed {
		t.Error("removal not reported")
	}
	if _, ok := b.ID("a"); ok {
		t.Error("removed endpoint still known")
	}
}

func TestRoundRobinHonoursWeights(t *testing.T) {
	b := httpbalance.New(httpbalance.Config{})
	b.Update([]httpbalance.Endpoint{{Addr: "a", Weight: 1}, {Addr: "b", Weight: 3}, {Addr: "c"}})
	got := map[string]int{}
	var seq []string
	for i := range 500 {
		p, err := b.Pick(nil)
		if err != nil {
			t.Fatal(err)
		}
		got[p.Addr]++
		if i < 5 {
			seq = append(seq, p.Addr)
		}
		p.Done()
	}
	if diff := cmp.Diff(map[string]int{"a": 100, "b": 300, "c": 100}, got); diff != "" {
		t.Errorf("picks (-want +got):\n%s", diff)
	}
	// Smooth: b's picks are spread, not three in a row.
	if diff := cmp.Diff([]string{"b", "a", "b", "c", "b"}, seq); diff != "" {
		t.Errorf("first five picks (-want +got):\n%s", diff)
	}
}
