package consul_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"

	"github.com/gridmesh/gridmesh/internal/testutil/consul"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func register(t *testing.T, c *api.Client, id string, tags []string, status string) {
	t.Helper()
	err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: id, Name: "trading", Port: 8443, Address: "127.0.0.1", Tags: tags,
		Check: &api.AgentServiceCheck{CheckID: "service:" + id, TTL: "1h", Status: status},
	})
	if err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
}

// ids returns the IDs of the trading instances (passing ones only when
// passing) and the query's index.
func ids(t *testing.T, c *api.Client, passing bool) ([]string, uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	entries, meta, err := c.Health().Service("trading", "", passing, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		t.Fatalf("health: %v", err)
	}
	out := []string{}
	for _, e := range entries {
		out = append(out, e.Service.ID)
	}
	return out, meta.LastIndex
}

// waitFor polls cond every 20ms until it holds, failing the test after 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10s: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestStartServesAgentAndCatalog: a started agent registers services
// through its agent API, filters them by health and tag, knows no other
// datacenter, and its TTL checks expire.
func TestStartServesAgentAndCatalog(t *testing.T) {
	a := consul.Start(t)
	c := a.Client()
	register(t, c, "a", []string{"v1"}, api.HealthPassing)
	register(t, c, "b", []string{"v2"}, api.HealthPassing)
	register(t, c, "c", []string{"v2"}, api.HealthCritical)
	tests := []struct {
		name string
		tags []string
		want []string
	}{
		{"all passing", nil, []string{"a", "b"}},
		{"tag v2", []string{"v2"}, []string{"b"}},
		{"tag none", []string{"v3"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			entries, _, err := c.Health().ServiceMultipleTags("trading", tt.tags, true, nil)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range entries {
				got = append(got, e.Service.ID)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("passing ids (-want +got):\n%s", diff)
			}
		})
	}
	if _, _, err := c.Health().Service("trading", "", true, &api.QueryOptions{Datacenter: "nowhere"}); err == nil || !strings.Contains(err.Error(), "No path to datacenter") {
		t.Errorf("unknown dc: err = %v, want No path to datacenter", err)
	}
	if err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: "d", Name: "trading", Port: 8443, Check: &api.AgentServiceCheck{CheckID: "service:d", TTL: "200ms", Status: api.HealthPassing},
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "d's TTL check expired", func() bool {
		got, _ := ids(t, c, true)
		return cmp.Equal(got, []string{"a", "b"})
	})
}

// TestStopAndRestart: a stopped agent refuses connections; restarted on the
// same address it has the services registered through its agent API back,
// a TTL check with the status of its last update (critical without one),
// while the catalog starts over (index lower, KV gone).
func TestStopAndRestart(t *testing.T) {
	a := consul.Start(t)
	c := a.Client()
	for i := range 20 { // push the Raft index up, so going backwards shows
		if _, err := c.KV().Put(&api.KVPair{Key: "k", Value: []byte{byte(i)}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	register(t, c, "a", nil, api.HealthPassing)
	register(t, c, "b", nil, api.HealthPassing)
	if err := c.Agent().PassTTL("service:a", "heartbeat"); err != nil {
		t.Fatal(err)
	}
	_, before := ids(t, c, false)
	addr := a.Addr()
	a.Stop(t)
	if _, _, err := c.Catalog().Services(nil); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("stopped agent: err = %v, want connection refused", err)
	}
	a.Restart(t)
	if a.Addr() != addr {
		t.Fatalf("address changed: %s -> %s", addr, a.Addr())
	}
	var got []string
	var after uint64
	waitFor(t, "agent services back in the catalog", func() bool {
		got, after = ids(t, c, true)
		return cmp.Equal(got, []string{"a"})
	})
	if all, _ := ids(t, c, false); !cmp.Equal(all, []string{"a", "b"}) {
		t.Errorf("after restart: instances %v, want [a b] (b critical: registered passing, never updated)", all)
	}
	if after >= before {
		t.Errorf("index after restart %d, want below %d (the catalog starts over)", after, before)
	}
	if kv, _, err := c.KV().Get("k", nil); err != nil || kv != nil {
		t.Errorf("KV after restart: %v, %v; want gone", kv, err)
	}
}

// TestRestartEmptyForgetsServices: after RestartEmpty the agent knows no
// service.
func TestRestartEmptyForgetsServices(t *testing.T) {
	a := consul.Start(t)
	c := a.Client()
	register(t, c, "a", nil, api.HealthPassing)
	a.RestartEmpty(t)
	if got, _ := ids(t, c, false); len(got) != 0 {
		t.Errorf("after RestartEmpty: %v, want none", got)
	}
	if err := c.Agent().PassTTL("service:a", ""); err == nil {
		t.Error("heartbeat of a forgotten check: want an error")
	}
}

// TestPauseHangsRequestsUntilResume: a paused agent accepts connections but
// answers nothing; after Resume it answers again.
func TestPauseHangsRequestsUntilResume(t *testing.T) {
	a := consul.Start(t)
	c := a.Client()
	register(t, c, "a", nil, api.HealthPassing)
	a.Pause(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, _, err := c.Health().Service("trading", "", true, (&api.QueryOptions{}).WithContext(ctx))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("paused agent: err = %v, want a deadline error (hang, not refusal)", err)
	}
	a.Resume(t)
	if got, _ := ids(t, c, true); !cmp.Equal(got, []string{"a"}) {
		t.Errorf("after Resume: %v, want [a]", got)
	}
}

// TestACLsDefaultDeny: with WithACLs, the anonymous token may not register;
// a token from CreateToken may, for its service only; the management
// token may do anything.
func TestACLsDefaultDeny(t *testing.T) {
	a := consul.Start(t, consul.WithACLs())
	writer := a.CreateToken(t, "trading-write", `service "trading" { policy = "write" }`)
	tests := []struct {
		name    string
		client  *api.Client
		service string
		denied  string // "" = allowed
	}{
		{"anonymous", a.ClientWithToken(""), "trading", "lacks permission 'service:write'"},
		{"unknown token", a.ClientWithToken("00000000-0000-4000-8000-000000000000"), "trading", "ACL not found"},
		{"policy token, its service", a.ClientWithToken(writer), "trading", ""},
		{"policy token, another service", a.ClientWithToken(writer), "billing", "lacks permission 'service:write' on \"billing\""},
		{"management token", a.Client(), "billing", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: tt.service + "-" + tt.name, Name: tt.service, Port: 1})
			var se api.StatusError
			switch {
			case tt.denied == "" && err != nil:
				t.Errorf("register: %v, want allowed", err)
			case tt.denied != "" && (!errors.As(err, &se) || se.Code != 403 || !strings.Contains(se.Body, tt.denied)):
				t.Errorf("register: %v, want 403 containing %q", err, tt.denied)
			}
		})
	}
}

// TestRotateCA: RotateCA makes a new active root; the old one stays in the
// roots list, and the new one is signed into the chain.
func TestRotateCA(t *testing.T) {
	a := consul.Start(t)
	before := a.CARoots(t)
	id := a.RotateCA(t)
	after := a.CARoots(t)
	if id == before.ActiveRootID || after.ActiveRootID != id {
		t.Fatalf("active root %s -> %s (RotateCA said %s)", before.ActiveRootID, after.ActiveRootID, id)
	}
	var ids []string
	for _, r := range after.Roots {
		ids = append(ids, r.ID)
	}
	if len(ids) != 2 || !strings.Contains(strings.Join(ids, " "), before.ActiveRootID) {
		t.Errorf("roots after rotation %v, want the old %s and the new %s", ids, before.ActiveRootID, id)
	}
	if after.TrustDomain != before.TrustDomain || !strings.HasSuffix(after.TrustDomain, ".consul") {
		t.Errorf("trust domain %q -> %q, want one <cluster-id>.consul kept", before.TrustDomain, after.TrustDomain)
	}
}

// TestWriteConfigEntry: a written config entry reads back.
func TestWriteConfigEntry(t *testing.T) {
	a := consul.Start(t)
	a.WriteConfigEntry(t, &api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "trading", Protocol: "http"})
	a.WriteConfigEntry(t, &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "trading", Sources: []*api.SourceIntention{
		{Name: "web", Permissions: []*api.IntentionPermission{{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/v1/"}}}},
	}})
	e, _, err := a.Client().ConfigEntries().Get(api.ServiceIntentions, "trading", nil)
	if err != nil {
		t.Fatal(err)
	}
	src := e.(*api.ServiceIntentionsConfigEntry).Sources
	if len(src) != 1 || src[0].Name != "web" || len(src[0].Permissions) != 1 || src[0].Permissions[0].HTTP.PathPrefix != "/v1/" {
		t.Errorf("intentions read back: %+v", src)
	}
}

// TestJoinWAN: an agent answers ?dc= for a datacenter it is WAN-joined to.
func TestJoinWAN(t *testing.T) {
	dc1 := consul.Start(t)
	dc2 := consul.Start(t, consul.WithDatacenter("dc2"))
	dc1.JoinWAN(t, dc2)
	register(t, dc2.Client(), "far", nil, api.HealthPassing)
	entries, _, err := dc1.Client().Health().Service("trading", "", true, &api.QueryOptions{Datacenter: "dc2"})
	if err != nil || len(entries) != 1 || entries[0].Service.ID != "far" {
		t.Fatalf("dc2 through dc1: %v, %v", entries, err)
	}
}
