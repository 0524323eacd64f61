package consul_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"

	"github.com/gridmesh/gridmesh/internal/testutil/consul"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func register(t *testing.T, c *api.Client, id string, tags []string, ttl string) {
	t.Helper()
	err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: id, Name: "trading", Port: 8443, Address: "127.0.0.1", Tags: tags,
		Meta:  map[string]string{"spiffe_id": "spiffe://example.org/service/trading"},
		Check: &api.AgentServiceCheck{TTL: ttl, DeregisterCriticalServiceAfter: "1s"},
	})
	if err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
}

func passingIDs(t *testing.T, c *api.Client, tags []string, q *api.QueryOptions) ([]string, uint64) {
	t.Helper()
	entries, meta, err := c.Health().ServiceMultipleTags("trading", tags, true, q)
	if err != nil {
		t.Fatalf("health: %v", err)
	}
	ids := []string{}
	for _, e := range entries {
		ids = append(ids, e.Service.ID)
	}
	return ids, meta.LastIndex
}

func TestHealthPassingAndTags(t *testing.T) {
	f := consul.New(t, consul.Options{})
	c := f.Client()
	register(t, c, "a", []string{"v1"}, "10s")
	register(t, c, "b", []string{"v2"}, "10s")
	register(t, c, "c", []string{"v2"}, "10s")
	for _, id := range []string{"a", "b"} {
		if err := c.Agent().UpdateTTL("service:"+id, "ok", api.HealthPassing); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name string
		tags []string
		want []string
	}{
		{"all passing", nil, []string{"a", "b"}},
		{"tag v2", []string{"v2"}, []string{"b"}},
		{"tag none", []string{"v3"}, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := passingIDs(t, c, tt.tags, nil)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("passing ids (-want +got):\n%s", diff)
			}
		})
	}
	if _, _, err := c.Health().Service("trading", "", true, &api.QueryOptions{Datacenter: "nowhere"}); err == nil {
		t.Error("unknown dc: want an error, got nil")
	}
}

func TestBlockingQueryReturnsOnChangeAndHonoursWait(t *testing.T) {
	f := consul.New(t, consul.Options{})
	c := f.Client()
	register(t, c, "a", nil, "10s")
	_, idx := passingIDs(t, c, nil, nil)

	start := time.Now()
	_, idx2 := passingIDs(t, c, nil, &api.QueryOptions{WaitIndex: idx, WaitTime: 300 * time.Millisecond})
	if waited := time.Since(start); waited < 300*time.Millisecond || idx2 != idx {
		t.Errorf("no change: returned after %v with index %d, want >= 300ms and index %d", waited, idx2, idx)
	}

	done := make(chan []string, 1)
	go func() {
		ids, _ := passingIDs(t, c, nil, &api.QueryOptions{WaitIndex: idx, WaitTime: 30 * time.Second})
		done <- ids
	}()
	time.Sleep(100 * time.Millisecond) // let the query block; the result is the same either way
	if err := c.Agent().PassTTL("service:a", ""); err != nil {
		t.Fatal(err)
	}
	select {
	case ids := <-done:
		if diff := cmp.Diff([]string{"a"}, ids); diff != "" {
			t.Errorf("after pass (-want +got):\n%s", diff)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("blocking query did not return on change")
	}
}

func TestTTLExpiryAndReap(t *testing.T) {
	f := consul.New(t, consul.Options{MinDeregisterCriticalAfter: time.Millisecond, ReapInterval: 50 * time.Millisecond})
	c := f.Client()
	register(t, c, "a", nil, "200ms")
	if err := c.Agent().PassTTL("service:a", ""); err != nil {
		t.Fatal(err)
	}
	if ids, _ := passingIDs(t, c, nil, nil); len(ids) != 1 {
		t.Fatalf("passing after heartbeat: %v", ids)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		entries, _, err := c.Health().Service("trading", "", false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) == 0 {
			break // critical, then reaped after DeregisterCriticalServiceAfter
		}
		if time.Now().After(deadline) {
			t.Fatalf("service not reaped: %d entries", len(entries))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := c.Agent().PassTTL("service:a", ""); err == nil {
		t.Error("heartbeat of a reaped check: want an error")
	}
}

func TestStopStartKeepsStateOnSameAddress(t *testing.T) {
	f := consul.New(t, consul.Options{})
	c := f.Client()
	register(t, c, "a", nil, "10s")
	addr := f.Addr()
	f.Stop()
	if _, _, err := c.Catalog().Services(nil); err == nil {
		t.Fatal("stopped fake answered")
	}
	f.Start()
	if f.Addr() != addr {
		t.Fatalf("address changed: %s -> %s", addr, f.Addr())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.WaitServe(ctx); err != nil {
		t.Fatal(err)
	}
	svcs, _, err := c.Catalog().Services(nil)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string][]string{"trading": {}}, svcs); diff != "" {
		t.Errorf("services after restart (-want +got):\n%s", diff)
	}
}

func TestIntentionsMatchPrecedence(t *testing.T) {
	f := consul.New(t, consul.Options{})
	c := f.Client()
	for _, ixn := range []*api.Intention{
		{SourceName: "*", DestinationName: "trading", Action: api.IntentionActionDeny},
		{SourceName: "web", DestinationName: "trading", Action: api.IntentionActionAllow},
		{SourceName: "web", DestinationName: "*", Action: api.IntentionActionDeny},
		{SourceName: "web", DestinationName: "billing", Action: api.IntentionActionAllow},
	} {
		if _, err := c.Connect().IntentionUpsert(ixn, nil); err != nil {
			t.Fatal(err)
		}
	}
	m, _, err := c.Connect().IntentionMatch(&api.IntentionMatch{By: api.IntentionMatchDestination, Names: []string{"trading"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		Src, Dst, Action string
		Prec             int
	}
	var got []row
	for _, ixn := range m["trading"] {
		got = append(got, row{ixn.SourceName, ixn.DestinationName, string(ixn.Action), ixn.Precedence})
	}
	want := []row{{"web", "trading", "allow", 9}, {"*", "trading", "deny", 8}, {"web", "*", "deny", 6}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("match (-want +got):\n%s", diff)
	}
	for _, tt := range []struct {
		src, dst string
		want     bool
	}{{"web", "trading", true}, {"api", "trading", false}, {"web", "billing", true}, {"web", "other", false}} {
		ok, _, err := c.Connect().IntentionCheck(&api.IntentionCheck{Source: tt.src, Destination: tt.dst}, nil)
		if err != nil || ok != tt.want {
			t.Errorf("check %s->%s = %v, %v; want %v", tt.src, tt.dst, ok, err, tt.want)
		}
	}
}

// TestCheckUpdateEachRequestOwnStatus is named after a fake bug: the update
// endpoint kept the first request's status for every later request.
func TestCheckUpdateEachRequestOwnStatus(t *testing.T) {
	f := consul.New(t, consul.Options{})
	c := f.Client()
	register(t, c, "a", nil, "10s")
	for _, st := range []string{api.HealthPassing, api.HealthCritical, api.HealthWarning, api.HealthPassing} {
		if err := c.Agent().UpdateTTL("service:a", "out-"+st, st); err != nil {
			t.Fatal(err)
		}
		entries, _, err := c.Health().Service("trading", "", false, nil)
		if err != nil || len(entries) != 1 {
			t.Fatalf("health: %v, %d entries", err, len(entries))
		}
		ch := entries[0].Checks[1]
		if ch.Status != st || ch.Output != "out-"+st {
			t.Errorf("after update to %s: status %q output %q", st, ch.Status, ch.Output)
		}
	}
}
