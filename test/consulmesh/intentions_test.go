package consulmesh_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/internal/testutil/consul"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

// TestConsulIntentionsGRPC: a gRPC server with a Consul identity enforces
// the Consul intentions of its service through mesh.IntentionsAuthorizer,
// on an agent with ACLs on and default_policy deny: L7 permissions name
// gRPC methods by path (exact, and a prefix gated on a metadata header),
// an L4 deny refuses a service outright, a caller with no intention gets
// Consul's default (deny), and a new intention applies to the next call.
func TestConsulIntentionsGRPC(t *testing.T) {
	a := consul.Start(t, consul.WithACLs())
	a.WriteConfigEntry(t, &api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "trading", Protocol: "grpc"})
	a.WriteConfigEntry(t, &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "trading", Sources: []*api.SourceIntention{
		{Name: "web", Permissions: []*api.IntentionPermission{
			{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathExact: unaryCall}},
		}},
		{Name: "ops", Permissions: []*api.IntentionPermission{
			{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/grpc.testing.TestService/",
				Header: []api.IntentionHTTPHeaderPermission{{Name: "x-ops-ticket", Regex: "OPS-[0-9]+"}}}},
		}},
		{Name: "batch", Action: api.IntentionActionDeny},
	}})
	trading := consulSource(t, a, "trading")
	sources := map[string]*security.ConsulSource{}
	for _, s := range []string{"web", "ops", "batch", "reports"} {
		sources[s] = consulSource(t, a, s)
	}
	in := watchIntentions(t, a, trustDomain(t, trading), "trading")
	svc := &echo{}
	addr := serve(t, svc, mesh.WithIdentity(trading), mesh.WithAuthorizer(mesh.IntentionsAuthorizer(in)))
	tradingID := consulID(t, trading, "dc1", "trading")
	clients := map[string]testgrpc.TestServiceClient{}
	for name, src := range sources {
		clients[name] = testgrpc.NewTestServiceClient(dial(t, addr, mesh.WithIdentity(src), mesh.WithServerID(tradingID)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	invoke := func(ctx context.Context, caller, method string) error {
		c := clients[caller]
		if method == unaryCall {
			_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
			return err
		}
		_, err := c.EmptyCall(ctx, &testpb.Empty{})
		return err
	}
	tests := []struct {
		name     string
		caller   string
		method   string
		md       metadata.MD
		want     codes.Code
		wantRule string // part of the denial message
	}{
		{"L7 exact method", "web", unaryCall, nil, codes.OK, ""},
		{"L7 other method: default", "web", emptyCall, nil, codes.PermissionDenied, "no permission matches POST " + emptyCall},
		{"L7 prefix with header", "ops", emptyCall, metadata.Pairs("x-ops-ticket", "OPS-42"), codes.OK, ""},
		{"L7 prefix, header malformed", "ops", emptyCall, metadata.Pairs("x-ops-ticket", "ticket 42"), codes.PermissionDenied, "consul intention ops => trading"},
		{"L7 prefix, header missing", "ops", unaryCall, nil, codes.PermissionDenied, "consul intention ops => trading"},
		{"L4 deny", "batch", unaryCall, nil, codes.PermissionDenied, "consul intention batch => trading (deny)"},
		{"no intention: Consul's default", "reports", unaryCall, nil, codes.PermissionDenied, "default deny (Consul's default intention policy)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cctx := ctx
			if tt.md != nil {
				cctx = metadata.NewOutgoingContext(ctx, tt.md)
			}
			before := svc.calls.Load()
			err := invoke(cctx, tt.caller, tt.method)
			if status.Code(err) != tt.want || !strings.Contains(status.Convert(err).Message(), tt.wantRule) {
				t.Fatalf("%s → %s: %v, want %v with %q", tt.caller, tt.method, err, tt.want, tt.wantRule)
			}
			if reached := svc.calls.Load() > before; reached != (tt.want == codes.OK) {
				t.Errorf("handler reached = %v", reached)
			}
		})
	}

	// A change reaches the mesh through the blocking query.
	start := time.Now()
	if _, err := a.Client().Connect().IntentionUpsert(&api.Intention{SourceName: "reports", DestinationName: "trading", Action: api.IntentionActionAllow}, nil); err != nil {
		t.Fatal(err)
	}
	took, ok := poll(5*time.Second, func() bool { return invoke(ctx, "reports", unaryCall) == nil })
	if !ok {
		t.Fatal("reports still denied 5s after an allow intention was written")
	}
	t.Logf("new intention effective on calls %v after the write (%v including the write)", took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// TestConsulIntentionsHTTP: an HTTP server with a Consul identity enforces
// L7 intentions on the normalized request path: exact, prefix and regex
// paths with methods, a deny that a dot-segment path cannot get around,
// and a path the mesh refuses before any intention is asked.
func TestConsulIntentionsHTTP(t *testing.T) {
	a := consul.Start(t)
	a.WriteConfigEntry(t, &api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "ledger", Protocol: "http"})
	a.WriteConfigEntry(t, &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "ledger", Sources: []*api.SourceIntention{
		{Name: "web", Permissions: []*api.IntentionPermission{
			{Action: api.IntentionActionDeny, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/admin/"}},
			{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathExact: "/healthz"}},
			{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/v1/", Methods: []string{"GET"}}},
			{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathRegex: "/v1/orders/[0-9]+", Methods: []string{"POST"}}},
			{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/ops/",
				Header: []api.IntentionHTTPHeaderPermission{{Name: "X-Ops-Ticket", Regex: "OPS-[0-9]+"}}}},
		}},
		{Name: "*", Action: api.IntentionActionDeny},
	}})
	ledger := consulSource(t, a, "ledger")
	web := consulSource(t, a, "web")
	batch := consulSource(t, a, "batch")
	in := watchIntentions(t, a, trustDomain(t, ledger), "ledger")
	var reached atomic.Int64
	base := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		w.Write([]byte(r.URL.Path))
	}), mesh.WithIdentity(ledger), mesh.WithAuthorizer(mesh.IntentionsAuthorizer(in)))
	ledgerID := consulID(t, ledger, "dc1", "ledger")
	client := func(src *security.ConsulSource) *http.Client {
		c, err := mesh.HTTPClient(mesh.WithIdentity(src), mesh.WithServerID(ledgerID))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Transport.(*mesh.HTTPTransport).Close() })
		return c
	}
	clients := map[string]*http.Client{"web": client(web), "batch": client(batch)}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tests := []struct {
		name     string
		caller   string
		method   string
		path     string
		want     int
		wantBody string   // part of the body
		header   []string // name, value, ...
	}{
		{"exact", "web", "GET", "/healthz", 200, "/healthz", nil},
		{"prefix with method", "web", "GET", "/v1/trades/7", 200, "/v1/trades/7", nil},
		{"prefix, method not listed", "web", "DELETE", "/v1/trades/7", 403, "no permission matches DELETE /v1/trades/7", nil},
		{"regex with method", "web", "POST", "/v1/orders/12", 200, "/v1/orders/12", nil},
		{"regex is whole-path", "web", "POST", "/v1/orders/12/cancel", 403, "no permission matches POST /v1/orders/12/cancel", nil},
		{"deny prefix", "web", "GET", "/admin/users", 403, "permission 1 (deny path-prefix /admin/)", nil},
		{"dot segments normalized before the intention", "web", "GET", "/v1/../admin/users", 403, "permission 1 (deny path-prefix /admin/)", nil},
		{"duplicate slashes normalized", "web", "GET", "/v1//trades", 200, "/v1/trades", nil},
		{"encoded slash refused by the mesh", "web", "GET", "/v1/trades%2F..%2Fadmin", 400, "encoded slash", nil},
		{"wildcard L4 deny", "batch", "GET", "/healthz", 403, "consul intention * => ledger (deny)", nil},
		{"header permission met", "web", "GET", "/ops/restart", 200, "/ops/restart", []string{"X-Ops-Ticket", "OPS-42"}},
		{"header permission, wrong value", "web", "GET", "/ops/restart", 403, "no permission matches GET /ops/restart", []string{"X-Ops-Ticket", "OPS-42x"}},
		{"header permission, header missing", "web", "GET", "/ops/restart", 403, "no permission matches GET /ops/restart", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := reached.Load()
			code, body, err := httpDo(ctx, clients[tt.caller], tt.method, base+tt.path, tt.header...)
			if err != nil || code != tt.want || !strings.Contains(body, tt.wantBody) {
				t.Fatalf("%s %s as %s: %d %q %v, want %d with %q", tt.method, tt.path, tt.caller, code, body, err, tt.want, tt.wantBody)
			}
			if got := reached.Load() > before; got != (tt.want == 200) {
				t.Errorf("handler reached = %v", got)
			}
		})
	}
}
