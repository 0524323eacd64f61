package discovery_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/metadata"

	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/internal/testutil/consul"
)

// tradingL7 is the service-intentions entry the L7 tests write for
// "trading": web gets paths, methods and a header-gated regex; ops is
// gated on headers only; batch is an L4 deny.
func tradingL7() *api.ServiceIntentionsConfigEntry {
	return &api.ServiceIntentionsConfigEntry{
		Kind: api.ServiceIntentions,
		Name: "trading",
		Sources: []*api.SourceIntention{
			{Name: "web", Permissions: []*api.IntentionPermission{
				{Action: api.IntentionActionDeny, HTTP: &api.IntentionHTTPPermission{PathExact: "/admin"}},
				{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/v1/", Methods: []string{"GET", "HEAD"}}},
				{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathRegex: "/orders/[0-9]+", Methods: []string{"POST"},
					Header: []api.IntentionHTTPHeaderPermission{{Name: "X-Idempotency-Key", Present: true}}}},
				{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/trading.v1.Trading/"}},
			}},
			{Name: "ops", Permissions: []*api.IntentionPermission{
				{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/", Header: []api.IntentionHTTPHeaderPermission{
					{Name: "x-ops-ticket", Regex: "OPS-[0-9]+"},
					{Name: "x-env", Exact: "prod", Invert: true},
				}}},
				{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{Header: []api.IntentionHTTPHeaderPermission{
					{Name: "User-Agent", Prefix: "meshctl/"},
					{Name: "X-Team", Suffix: "-sre"},
				}}},
			}},
			{Name: "batch", Action: api.IntentionActionDeny},
		},
	}
}

// TestIntentionsL7Permissions: service-intentions permissions written to a
// real agent decide HTTP requests by path (exact, prefix, whole-path
// regex), method and headers (present, exact, regex, prefix, suffix,
// inverted), and gRPC calls as POSTs to "/pkg.Service/Method" with their
// metadata as headers; a request no permission matches gets the default,
// and an HTTP request without its path cannot pass an L7 intention.
func TestIntentionsL7Permissions(t *testing.T) {
	a := consul.Start(t)
	a.WriteConfigEntry(t, &api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "trading", Protocol: "http"})
	a.WriteConfigEntry(t, tradingL7())
	reg, _ := newRegistry(t, a)
	in := watchIntentions(t, reg, discovery.IntentionsConfig{Service: "trading", Default: discovery.DefaultDeny})

	caller := func(name string) spiffeid.ID {
		return spiffeid.RequireFromString("spiffe://0b1e9a52-6a8c-4d7e-9f1a-3c2d4e5f6a7b.consul/ns/default/dc/dc1/svc/" + name)
	}
	const (
		web       = "consul intention web => trading"
		ops       = "consul intention ops => trading"
		deflt     = "consul intentions default deny (IntentionsConfig.Default)"
		webPerm1  = web + " permission 1 (deny path /admin)"
		webPerm2  = web + " permission 2 (allow GET,HEAD path-prefix /v1/)"
		webPerm3  = web + " permission 3 (allow POST path-regex /orders/[0-9]+ header X-Idempotency-Key)"
		webPerm4  = web + " permission 4 (allow path-prefix /trading.v1.Trading/)"
		opsPerm1  = ops + " permission 1 (allow path-prefix / header x-ops-ticket header x-env)"
		opsPerm2  = ops + " permission 2 (allow header User-Agent header X-Team)"
		noMatch   = " (no permission matches "
		grpcTrade = "/trading.v1.Trading/PlaceOrder"
		grpcAdmin = "/trading.v1.Admin/Reset"
	)
	type decision struct {
		Allowed bool
		Rule    string
	}
	tests := []struct {
		name   string
		caller string
		method string
		path   string // "" for gRPC (method is the full method) or an HTTP request without its path
		header http.Header
		md     metadata.MD // gRPC metadata in the call's context
		want   decision
	}{
		// HTTP paths and methods.
		{"http prefix and method", "web", "GET", "/v1/trades", nil, nil, decision{true, webPerm2}},
		{"http HEAD in methods", "web", "HEAD", "/v1/trades/7", nil, nil, decision{true, webPerm2}},
		{"http method not listed: default", "web", "DELETE", "/v1/trades", nil, nil, decision{false, web + noMatch + "DELETE /v1/trades): " + deflt}},
		{"http exact deny comes first", "web", "GET", "/admin", nil, nil, decision{false, webPerm1}},
		{"http exact does not cover below", "web", "GET", "/admin/users", nil, nil, decision{false, web + noMatch + "GET /admin/users): " + deflt}},
		{"http prefix is not a path-segment match", "web", "GET", "/v1", nil, nil, decision{false, web + noMatch + "GET /v1): " + deflt}},
		{"http regex with header present", "web", "POST", "/orders/42", http.Header{"X-Idempotency-Key": {"k1"}}, nil, decision{true, webPerm3}},
		{"http regex without the header", "web", "POST", "/orders/42", nil, nil, decision{false, web + noMatch + "POST /orders/42): " + deflt}},
		{"http regex matches the whole path only", "web", "POST", "/orders/42/cancel", http.Header{"X-Idempotency-Key": {"k1"}}, nil, decision{false, web + noMatch + "POST /orders/42/cancel): " + deflt}},
		// HTTP headers.
		{"header regex and inverted exact", "ops", "GET", "/anything", http.Header{"X-Ops-Ticket": {"OPS-17"}, "X-Env": {"staging"}}, nil, decision{true, opsPerm1}},
		{"inverted exact absent header", "ops", "GET", "/anything", http.Header{"X-Ops-Ticket": {"OPS-17"}}, nil, decision{true, opsPerm1}},
		{"inverted exact refuses", "ops", "GET", "/anything", http.Header{"X-Ops-Ticket": {"OPS-17"}, "X-Env": {"prod"}}, nil, decision{false, ops + noMatch + "GET /anything): " + deflt}},
		{"header regex is whole-value", "ops", "GET", "/anything", http.Header{"X-Ops-Ticket": {"OPS-17x"}}, nil, decision{false, ops + noMatch + "GET /anything): " + deflt}},
		{"header prefix and suffix", "ops", "PUT", "/x", http.Header{"User-Agent": {"meshctl/1.2"}, "X-Team": {"payments-sre"}}, nil, decision{true, opsPerm2}},
		{"header suffix fails", "ops", "PUT", "/x", http.Header{"User-Agent": {"meshctl/1.2"}, "X-Team": {"sre-payments"}}, nil, decision{false, ops + noMatch + "PUT /x): " + deflt}},
		// L4 and no intention.
		{"L4 deny", "batch", "GET", "/v1/trades", nil, nil, decision{false, "consul intention batch => trading (deny)"}},
		{"no intention: default", "reports", "GET", "/v1/trades", nil, nil, decision{false, deflt}},
		{"http without its path", "web", "GET", "", nil, nil, decision{false, web + " (L7 permissions need the HTTP request path, which was not given: denied)"}},
		// gRPC: POST to the full method, metadata as headers.
		{"grpc method under a path prefix", "web", grpcTrade, "", nil, nil, decision{true, webPerm4}},
		{"grpc method outside it", "web", grpcAdmin, "", nil, nil, decision{false, web + noMatch + "POST " + grpcAdmin + "): " + deflt}},
		{"grpc metadata as headers", "ops", grpcAdmin, "", nil, metadata.Pairs("x-ops-ticket", "OPS-9"), decision{true, opsPerm1}},
		{"grpc without the metadata", "ops", grpcAdmin, "", nil, nil, decision{false, ops + noMatch + "POST " + grpcAdmin + "): " + deflt}},
		{"grpc L4 deny", "batch", grpcTrade, "", nil, nil, decision{false, "consul intention batch => trading (deny)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			if tt.md != nil {
				ctx = metadata.NewIncomingContext(ctx, tt.md)
			}
			ok, rule := in.AuthorizeRequest(ctx, discovery.IntentionRequest{Caller: caller(tt.caller), Method: tt.method, Path: tt.path, Header: tt.header})
			if diff := cmp.Diff(tt.want, decision{ok, rule}); diff != "" {
				t.Errorf("decision (-want +got):\n%s", diff)
			}
		})
	}
}

// TestIntentionsConfigEntryChangeLatency: edits of a service-intentions
// entry (L4 to L7, a permission flipped, the source removed) reach
// decisions through the blocking query; the test logs how long each took.
func TestIntentionsConfigEntryChangeLatency(t *testing.T) {
	a := consul.Start(t)
	a.WriteConfigEntry(t, &api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "trading", Protocol: "http"})
	reg, _ := newRegistry(t, a)
	in := watchIntentions(t, reg, discovery.IntentionsConfig{Service: "trading", Default: discovery.DefaultDeny})
	web := spiffeid.RequireFromString("spiffe://example.org/service/web")
	get := func(path string) bool {
		ok, _ := in.AuthorizeRequest(context.Background(), discovery.IntentionRequest{Caller: web, Method: "GET", Path: path})
		return ok
	}
	entry := func(perms ...*api.IntentionPermission) *api.ServiceIntentionsConfigEntry {
		src := &api.SourceIntention{Name: "web", Permissions: perms}
		if len(perms) == 0 {
			src.Action = api.IntentionActionAllow
		}
		return &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "trading", Sources: []*api.SourceIntention{src}}
	}
	prefix := func(action api.IntentionAction, p string) *api.IntentionPermission {
		return &api.IntentionPermission{Action: action, HTTP: &api.IntentionHTTPPermission{PathPrefix: p}}
	}
	steps := []struct {
		name      string
		act       func()
		v1, admin bool
	}{
		{"L4 allow", func() { a.WriteConfigEntry(t, entry()) }, true, true},
		{"L7: only /v1/", func() { a.WriteConfigEntry(t, entry(prefix(api.IntentionActionAllow, "/v1/"))) }, true, false},
		{"L7: /admin/ too", func() {
			a.WriteConfigEntry(t, entry(prefix(api.IntentionActionAllow, "/v1/"), prefix(api.IntentionActionAllow, "/admin/")))
		}, true, true},
		{"L7: /v1/ flipped to deny", func() {
			a.WriteConfigEntry(t, entry(prefix(api.IntentionActionDeny, "/v1/"), prefix(api.IntentionActionAllow, "/admin/")))
		}, false, true},
		{"entry deleted", func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := a.Client().ConfigEntries().Delete(api.ServiceIntentions, "trading", (&api.WriteOptions{}).WithContext(ctx)); err != nil {
				t.Fatal(err)
			}
		}, false, false},
	}
	var worst time.Duration
	for _, s := range steps {
		s.act()
		took, ok := pollUntil(5*time.Second, func() bool { return get("/v1/x") == s.v1 && get("/admin/x") == s.admin })
		if !ok {
			t.Fatalf("%s: /v1/x allowed=%v, /admin/x allowed=%v after 5s; want %v, %v", s.name, get("/v1/x"), get("/admin/x"), s.v1, s.admin)
		}
		worst = max(worst, took)
		t.Logf("%s: effective %v after the write returned", s.name, took.Round(time.Millisecond))
	}
	t.Logf("slowest change: %v", worst.Round(time.Millisecond))
}

// TestIntentionsDefaultFromConsulWithACLs: on an agent with ACLs on and
// default_policy deny, a service token sees Consul's default as deny; a
// wildcard intention then decides for everyone, and once it is deleted
// the watch reads the default again. The management token sees the same
// default (default_policy, not its own rights).
func TestIntentionsDefaultFromConsulWithACLs(t *testing.T) {
	a := consul.Start(t, consul.WithACLs())
	token := a.CreateToken(t, "trading", `service "trading" { policy = "write" }`)
	reg, err := discovery.New(discovery.Config{Consul: a.ClientWithToken(token), RetryMin: 50 * time.Millisecond, RetryMax: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	in := watchIntentions(t, reg, discovery.IntentionsConfig{Service: "trading"})
	web := spiffeid.RequireFromString("spiffe://example.org/service/web")
	decide := func() (bool, string) {
		return in.Authorize(context.Background(), web, "/trading.v1.Trading/PlaceOrder")
	}
	if ok, rule := decide(); ok || rule != "consul intentions default deny (Consul's default intention policy)" {
		t.Fatalf("before any intention: allowed=%v (%s), want Consul's default deny", ok, rule)
	}
	upsert(t, a.Client(), "*", "trading", api.IntentionActionAllow)
	if _, ok := pollUntil(5*time.Second, func() bool { ok, _ := decide(); return ok }); !ok {
		t.Fatal("wildcard allow not applied within 5s")
	}
	if _, err := a.Client().Connect().IntentionDeleteExact("*", "trading", nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := pollUntil(5*time.Second, func() bool { ok, _ := decide(); return !ok }); !ok {
		t.Fatal("still allowed 5s after the wildcard was deleted")
	}
	if _, rule := decide(); rule != "consul intentions default deny (Consul's default intention policy)" {
		t.Errorf("after the wildcard went: %s, want Consul's default deny", rule)
	}

	mgmt, _ := newRegistry(t, a)
	inMgmt := watchIntentions(t, mgmt, discovery.IntentionsConfig{Service: "trading"})
	if ok, rule := inMgmt.Authorize(context.Background(), web, "/trading.v1.Trading/PlaceOrder"); ok || rule != "consul intentions default deny (Consul's default intention policy)" {
		t.Errorf("management token: allowed=%v (%s), want Consul's default deny", ok, rule)
	}
}

// TestIntentionsRefusesBadDefault: an unknown IntentionsConfig.Default is
// an error naming the field and the accepted values.
func TestIntentionsRefusesBadDefault(t *testing.T) {
	reg, err := discovery.New(discovery.Config{Consul: &api.Client{}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = reg.WatchIntentions(context.Background(), discovery.IntentionsConfig{Service: "trading", Default: "permit"})
	want := `discovery: IntentionsConfig.Default "permit": want "" (Consul's default), "allow" or "deny"`
	if err == nil || err.Error() != want {
		t.Errorf("err = %v, want %s", err, want)
	}
}
