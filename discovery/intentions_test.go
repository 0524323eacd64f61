package discovery_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/internal/testutil/consul"
)

func upsert(t *testing.T, c *api.Client, src, dst string, action api.IntentionAction) {
	t.Helper()
	if _, err := c.Connect().IntentionUpsert(&api.Intention{SourceName: src, DestinationName: dst, Action: action}, nil); err != nil {
		t.Fatal(err)
	}
}

func watchIntentions(t *testing.T, reg *discovery.Registry, cfg discovery.IntentionsConfig) *discovery.Intentions {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	in, err := reg.WatchIntentions(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = in.Close() })
	return in
}

// TestIntentionsAllowDenyDefault checks decisions under Consul's precedence
// (exact source beats "*", exact destination beats "*") and both defaults.
func TestIntentionsAllowDenyDefault(t *testing.T) {
	f := consul.Start(t)
	c := f.Client()
	upsert(t, c, "web", "trading", api.IntentionActionAllow)
	upsert(t, c, "batch", "trading", api.IntentionActionDeny)
	upsert(t, c, "*", "trading", api.IntentionActionDeny)
	upsert(t, c, "billing", "*", api.IntentionActionAllow) // loses to "*" => trading (precedence 8 > 6)
	upsert(t, c, "audit", "*", api.IntentionActionAllow)
	upsert(t, c, "web", "other", api.IntentionActionDeny) // another destination: ignored
	reg, _ := newRegistry(t, f)

	id := func(s string) spiffeid.ID { return spiffeid.RequireFromString(s) }
	type decision struct {
		Allowed bool
		Rule    string
	}
	tests := []struct {
		name   string
		cfg    discovery.IntentionsConfig
		caller spiffeid.ID
		want   decision
	}{
		{"exact allow", discovery.IntentionsConfig{Service: "trading"}, id("spiffe://example.org/service/web"),
			decision{true, "consul intention web => trading (allow)"}},
		{"exact deny", discovery.IntentionsConfig{Service: "trading"}, id("spiffe://example.org/service/batch"),
			decision{false, "consul intention batch => trading (deny)"}},
		{"wildcard source beats wildcard destination", discovery.IntentionsConfig{Service: "trading"}, id("spiffe://example.org/service/billing"),
			decision{false, "consul intention * => trading (deny)"}},
		{"consul-style SPIFFE ID", discovery.IntentionsConfig{Service: "trading"}, id("spiffe://example.org/ns/default/dc/dc1/svc/web"),
			decision{true, "consul intention web => trading (allow)"}},
		{"unnamed caller matches only wildcards", discovery.IntentionsConfig{Service: "trading"}, id("spiffe://example.org/host/x"),
			decision{false, "consul intention * => trading (deny)"}},
		{"wildcard destination applies", discovery.IntentionsConfig{Service: "reports"}, id("spiffe://example.org/service/audit"),
			decision{true, "consul intention audit => * (allow)"}},
		{"default deny", discovery.IntentionsConfig{Service: "reports", Default: discovery.DefaultDeny}, id("spiffe://example.org/service/web"),
			decision{false, "consul intentions default deny (IntentionsConfig.Default)"}},
		{"default allow", discovery.IntentionsConfig{Service: "reports", Default: discovery.DefaultAllow}, id("spiffe://example.org/service/web"),
			decision{true, "consul intentions default allow (IntentionsConfig.Default)"}},
		// A -dev agent has ACLs off, and Consul's default is then allow.
		{"default from consul", discovery.IntentionsConfig{Service: "reports"}, id("spiffe://example.org/service/web"),
			decision{true, "consul intentions default allow (Consul's default intention policy)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := watchIntentions(t, reg, tt.cfg)
			ok, rule := in.Authorize(context.Background(), tt.caller, "/trading.v1.Trading/PlaceOrder")
			if diff := cmp.Diff(tt.want, decision{ok, rule}); diff != "" {
				t.Errorf("decision (-want +got):\n%s", diff)
			}
		})
	}
}

// TestIntentionChangeTakesEffect: adding, flipping and deleting an
// intention changes decisions within seconds.
func TestIntentionChangeTakesEffect(t *testing.T) {
	f := consul.Start(t)
	c := f.Client()
	reg, ev := newRegistry(t, f)
	in := watchIntentions(t, reg, discovery.IntentionsConfig{Service: "trading", Default: discovery.DefaultDeny})
	web := spiffeid.RequireFromString("spiffe://example.org/service/web")
	allowed := func() bool { ok, _ := in.Authorize(context.Background(), web, "/x.Y/Z"); return ok }
	if allowed() {
		t.Fatal("allowed before any intention (default deny)")
	}
	steps := []struct {
		name string
		act  func()
		want bool
	}{
		{"allow added", func() { upsert(t, c, "web", "trading", api.IntentionActionAllow) }, true},
		{"flipped to deny", func() { upsert(t, c, "web", "trading", api.IntentionActionDeny) }, false},
		{"wildcard allow under the exact deny", func() { upsert(t, c, "*", "trading", api.IntentionActionAllow) }, false},
		{"exact deny deleted", func() {
			if _, err := c.Connect().IntentionDeleteExact("web", "trading", nil); err != nil {
				t.Fatal(err)
			}
		}, true},
	}
	for _, s := range steps {
		s.act()
		took, ok := pollUntil(5*time.Second, func() bool { return allowed() == s.want })
		if !ok {
			t.Fatalf("%s: still allowed=%v after 5s", s.name, !s.want)
		}
		t.Logf("%s: effective after %v", s.name, took.Round(time.Millisecond))
	}
	if n := ev.count(discovery.IntentionsUpdated); n < len(steps)+1 {
		t.Errorf("%d IntentionsUpdated events, want at least %d", n, len(steps)+1)
	}
}

// TestIntentionsKeptWhileConsulDown: the last intentions stay in force
// while Consul is unreachable, and WatchIntentions fails clearly when
// Consul is down from the start.
func TestIntentionsKeptWhileConsulDown(t *testing.T) {
	f := consul.Start(t)
	upsert(t, f.Client(), "web", "trading", api.IntentionActionAllow)
	reg, ev := newRegistry(t, f)
	in := watchIntentions(t, reg, discovery.IntentionsConfig{Service: "trading"})
	f.Stop(t)
	if _, ok := pollUntil(5*time.Second, func() bool { return ev.count(discovery.SourceUnreachable) > 0 }); !ok {
		t.Fatal("no SourceUnreachable event")
	}
	if ok, rule := in.Authorize(context.Background(), spiffeid.RequireFromString("spiffe://example.org/service/web"), "/x.Y/Z"); !ok {
		t.Errorf("denied while Consul is down (%s); want the last intentions kept", rule)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := reg.WatchIntentions(ctx, discovery.IntentionsConfig{Service: "trading"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WatchIntentions with Consul down = %v, want a deadline error", err)
	}
}

// TestIntentionsIgnoreNamesFromOtherTrustDomains: with a trust domain set,
// a federated caller whose ID names the same service matches only
// wildcard intentions.
func TestIntentionsIgnoreNamesFromOtherTrustDomains(t *testing.T) {
	f := consul.Start(t)
	upsert(t, f.Client(), "web", "trading", api.IntentionActionAllow)
	reg, err := discovery.New(discovery.Config{Consul: f.Client(), TrustDomain: spiffeid.RequireTrustDomainFromString("example.org")})
	if err != nil {
		t.Fatal(err)
	}
	in := watchIntentions(t, reg, discovery.IntentionsConfig{Service: "trading", Default: discovery.DefaultDeny})
	for id, want := range map[string]bool{
		"spiffe://example.org/service/web": true,
		"spiffe://partner.org/service/web": false,
	} {
		if ok, rule := in.Authorize(context.Background(), spiffeid.RequireFromString(id), "/x.Y/Z"); ok != want {
			t.Errorf("%s: allowed=%v (%s), want %v", id, ok, rule, want)
		}
	}
}
