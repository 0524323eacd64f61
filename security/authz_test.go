package security_test

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"

	"github.com/gridmesh/gridmesh/security"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var td = spiffeid.RequireTrustDomainFromString("example.org")

func id(p string) spiffeid.ID { return spiffeid.RequireFromPath(td, p) }

func TestRulesDecide(t *testing.T) {
	authz := security.Rules(
		security.Allow("gateway-reads", security.ExactID(id("/gateway")), "/rec.Registry/GetHoldings", "/rec.Registry/ListLots"),
		security.Allow("settlement-all", security.ExactID(id("/settlement")), "/rec.Registry/*"),
		security.Allow("ops", security.PathPrefix(id("/ops")), "*"),
		security.Allow("partner-domain", security.MemberOf(spiffeid.RequireTrustDomainFromString("partner.org")), "/rec.Registry/ListLots"),
		security.Refuse("no-interns", security.ExactID(id("/ops/intern"))),
	)
	tests := []struct {
		caller spiffeid.ID
		method string
		want   string // "" allowed, else the deciding rule
	}{
		{id("/gateway"), "/rec.Registry/GetHoldings", ""},
		{id("/gateway"), "/rec.Registry/Transfer", "default deny"},
		{id("/settlement"), "/rec.Registry/Transfer", ""},
		{id("/settlement"), "/rec.Accounts/Debit", "default deny"},
		{id("/ops"), "/rec.Accounts/Debit", ""},
		{id("/ops/alice"), "/rec.Accounts/Debit", ""},
		{id("/opsx"), "/rec.Accounts/Debit", "default deny"},
		{id("/ops/intern"), "/rec.Registry/ListLots", "rule no-interns"},
		{spiffeid.RequireFromString("spiffe://partner.org/x"), "/rec.Registry/ListLots", ""},
		{spiffeid.RequireFromString("spiffe://partner.org/x"), "/rec.Registry/GetHoldings", "default deny"},
		{spiffeid.RequireFromString("spiffe://evil.org/ops"), "/rec.Accounts/Debit", "default deny"},
	}
	for _, tc := range tests {
		t.Run(tc.caller.String()+tc.method, func(t *testing.T) {
			err := authz(context.Background(), security.Call{Caller: tc.caller, Method: tc.method})
			got := ""
			if err != nil {
				var denied *security.DeniedError
				if !errors.As(err, &denied) {
					t.Fatalf("error %v is not a *DeniedError", err)
				}
				want := &security.DeniedError{Caller: tc.caller, Target: tc.method, Rule: denied.Rule}
				if diff := cmp.Diff(want, denied, cmp.Comparer(func(a, b spiffeid.ID) bool { return a == b })); diff != "" {
					t.Errorf("denial (-want +got):\n%s", diff)
				}
				got = denied.Rule
			}
			if got != tc.want {
				t.Errorf("decision = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestCombinators(t *testing.T) {
	call := security.Call{Caller: id("/a"), Method: "/s.S/M"}
	allow, deny := security.AllowAll(), security.Rules()
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		authz security.Authorizer
		ok    bool
	}{
		{"AllOf allow allow", security.AllOf(allow, allow), true},
		{"AllOf allow deny", security.AllOf(allow, deny), false},
		{"AnyOf deny allow", security.AnyOf(deny, allow), true},
		{"AnyOf deny", security.AnyOf(deny), false},
		{"AnyOf empty", security.AnyOf(), false},
	} {
		if got := tc.authz(ctx, call) == nil; got != tc.ok {
			t.Errorf("%s: allowed = %v, want %v", tc.name, got, tc.ok)
		}
	}
}

func TestValidateMethodPattern(t *testing.T) {
	for pattern, ok := range map[string]bool{
		"*": true, "/pkg.Svc/Method": true, "/pkg.Svc/*": true,
		"pkg.Svc/Method": false, "/pkg.Svc": false, "/pkg.Svc/M/x": false, "/pkg.Svc/M*": false, "": false,
	} {
		if err := security.ValidateMethodPattern(pattern); (err == nil) != ok {
			t.Errorf("ValidateMethodPattern(%q) = %v, want ok=%v", pattern, err, ok)
		}
	}
}
