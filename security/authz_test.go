package security_test

import (
	"context"
	"errors"
	"strings"
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
	authz, err := security.Rules(
		security.Allow("gateway-reads", spiffeid.MatchID(id("/gateway")), "/rec.Registry/GetHoldings", "/rec.Registry/ListLots"),
		security.Allow("settlement-all", spiffeid.MatchID(id("/settlement")), "/rec.Registry/*"),
		security.Allow("ops", security.PathPrefix(id("/ops")), "*"),
		security.Allow("partner-domain", spiffeid.MatchMemberOf(spiffeid.RequireTrustDomainFromString("partner.org")), "/rec.Registry/ListLots"),
		security.Allow("auditors", spiffeid.MatchOneOf(id("/audit/a"), id("/audit/b")), "/rec.Registry/ListLots"),
		security.Refuse("no-interns", spiffeid.MatchID(id("/ops/intern"))),
	)
	if err != nil {
		t.Fatal(err)
	}
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
		{id("/audit/b"), "/rec.Registry/ListLots", ""},
		{id("/audit/c"), "/rec.Registry/ListLots", "default deny"},
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

func TestPathPrefix(t *testing.T) {
	m := security.PathPrefix(id("/ns/prod"))
	for caller, want := range map[string]bool{
		"spiffe://example.org/ns/prod":           true,
		"spiffe://example.org/ns/prod/trading":   true,
		"spiffe://example.org/ns/production":     false,
		"spiffe://example.org/ns":                false,
		"spiffe://other.org/ns/prod/trading":     false,
		"spiffe://example.org/ns/prod/a/b/c/d/e": true,
	} {
		if got := m(spiffeid.RequireFromString(caller)) == nil; got != want {
			t.Errorf("PathPrefix(/ns/prod) on %s: matched = %v, want %v", caller, got, want)
		}
	}
}

// TestBadRulesAreRefused is the table of invalid rules: Rules and HTTPRules
// refuse each with an error that names the constructor, the rule (index
// and name), and says what to write instead. Each case is tried on both
// constructors, with a pattern of the constructor's own grammar when the
// case is not about patterns.
func TestBadRulesAreRefused(t *testing.T) {
	anyone := spiffeid.MatchAny()
	type ctor struct {
		name  string
		build func(...security.Rule) (security.Authorizer, error)
		good  string // a valid pattern
	}
	ctors := []ctor{
		{"Rules", security.Rules, "/pkg.Svc/Method"},
		{"HTTPRules", security.HTTPRules, "GET /v1/trades"},
	}
	tests := []struct {
		name  string
		rules func(good string) []security.Rule
		// want are the substrings of the error, per constructor ("" for
		// both when only one entry).
		want map[string][]string
	}{
		{
			name:  "empty name",
			rules: func(good string) []security.Rule { return []security.Rule{security.Allow("", anyone, good)} },
			want:  map[string][]string{"": {`rule 0 (""): name is empty`, "give every rule a name"}},
		},
		{
			name: "duplicate name",
			rules: func(good string) []security.Rule {
				return []security.Rule{security.Allow("readers", anyone, good), security.Refuse("readers", anyone, good)}
			},
			want: map[string][]string{"": {`rule 1 ("readers"): name is also rule 0's`, "its own name"}},
		},
		{
			name:  "nil callers",
			rules: func(good string) []security.Rule { return []security.Rule{security.Allow("readers", nil, good)} },
			want:  map[string][]string{"": {`rule 0 ("readers"): callers is nil`, "spiffeid.MatchID(id)"}},
		},
		{
			name:  "zero rule",
			rules: func(string) []security.Rule { return []security.Rule{{}} },
			want:  map[string][]string{"": {`rule 0 (""): name is empty`, `rule 0 (""): callers is nil`}},
		},
		{
			name: "pattern of the other protocol",
			rules: func(good string) []security.Rule {
				bad := map[string]string{"/pkg.Svc/Method": "GET /v1/x", "GET /v1/trades": "pkg.Svc*/Method"}[good]
				return []security.Rule{security.Allow("ok", anyone, good), security.Allow("mixed", anyone, good, bad)}
			},
			want: map[string][]string{
				"Rules":     {`rule 1 ("mixed"): method "GET /v1/x": want "/package.Service/Method", "/package.Service/*" or "*"`},
				"HTTPRules": {`rule 1 ("mixed"): pattern "pkg.Svc*/Method": host "pkg.Svc*": want a host name, optionally starting with "*."`},
			},
		},
		{
			name: "malformed pattern",
			rules: func(good string) []security.Rule {
				bad := map[string]string{"/pkg.Svc/Method": "/pkg.Svc/M*", "GET /v1/trades": "get /v1/trades"}[good]
				return []security.Rule{security.Refuse("r", anyone, bad)}
			},
			want: map[string][]string{
				"Rules":     {`rule 0 ("r"): method "/pkg.Svc/M*": want "/package.Service/Method", "/package.Service/*" or "*"`},
				"HTTPRules": {`rule 0 ("r"): pattern "get /v1/trades": method "get": want an upper-case HTTP method such as GET`},
			},
		},
		{
			name: "unnormalized path",
			rules: func(good string) []security.Rule {
				bad := map[string]string{"/pkg.Svc/Method": "/pkg.Svc//Method", "GET /v1/trades": "GET /v1//trades"}[good]
				return []security.Rule{security.Refuse("r", anyone, bad)}
			},
			want: map[string][]string{
				"Rules":     {`rule 0 ("r"): method "/pkg.Svc//Method"`},
				"HTTPRules": {`rule 0 ("r"): pattern "GET /v1//trades": path "/v1//trades"`, "normalized form"},
			},
		},
		{
			name: "every error at once",
			rules: func(good string) []security.Rule {
				return []security.Rule{security.Allow("a", nil, good), security.Allow("b", anyone, "x"), security.Allow("", anyone, good)}
			},
			want: map[string][]string{"": {`rule 0 ("a"): callers is nil`, `rule 1 ("b"): `, `rule 2 (""): name is empty`}},
		},
	}
	cases := 0
	for _, tc := range tests {
		for _, c := range ctors {
			t.Run(tc.name+"/"+c.name, func(t *testing.T) {
				cases++
				authz, err := c.build(tc.rules(c.good)...)
				if err == nil {
					t.Fatal("no error")
				}
				if authz != nil {
					t.Error("an Authorizer came with the error")
				}
				want, ok := tc.want[c.name]
				if !ok {
					want = tc.want[""]
				}
				msg := err.Error()
				for _, line := range strings.Split(msg, "\n") {
					if !strings.HasPrefix(line, "security: "+c.name+": rule ") {
						t.Errorf("error line %q does not start with %q", line, "security: "+c.name+": rule ")
					}
				}
				for _, w := range want {
					if !strings.Contains(msg, w) {
						t.Errorf("error %q does not say %q", msg, w)
					}
				}
			})
		}
	}
	t.Logf("%d bad rule sets", cases)
}

func TestNoRulesDenyEverything(t *testing.T) {
	for name, build := range map[string]func(...security.Rule) (security.Authorizer, error){"Rules": security.Rules, "HTTPRules": security.HTTPRules} {
		authz, err := build()
		if err != nil {
			t.Fatalf("%s(): %v", name, err)
		}
		err = authz(context.Background(), security.Call{Caller: id("/a"), Method: "GET", Path: "/"})
		var denied *security.DeniedError
		if !errors.As(err, &denied) || denied.Rule != "default deny" {
			t.Errorf("%s() on a call: %v, want a default deny", name, err)
		}
	}
}

func TestCustomAuthorizerDenies(t *testing.T) {
	authz := security.Authorizer(func(_ context.Context, c security.Call) error {
		return security.Deny(c, "intention web -> trading (deny)")
	})
	err := authz(context.Background(), security.Call{Caller: id("/web"), Method: "POST", Path: "/v1/orders"})
	want := &security.DeniedError{Caller: id("/web"), Target: "POST /v1/orders", Rule: "intention web -> trading (deny)"}
	var got *security.DeniedError
	if !errors.As(err, &got) {
		t.Fatalf("error %v is not a *DeniedError", err)
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b spiffeid.ID) bool { return a == b })); diff != "" {
		t.Errorf("denial (-want +got):\n%s", diff)
	}
}

// TestMatcherAskedOnlyWhenPatternsMatch: go-spiffe's matchers build an
// error for every ID they refuse, so Rules and HTTPRules ask a rule's
// matcher only about calls its patterns match (the regression was 59
// allocations per call on a 20-rule policy, see bench.BenchmarkAuthorize).
func TestMatcherAskedOnlyWhenPatternsMatch(t *testing.T) {
	for _, tc := range []struct {
		name     string
		build    func(...security.Rule) (security.Authorizer, error)
		patterns [3]string
		call     security.Call
	}{
		{"Rules", security.Rules, [3]string{"/a.A/M", "/b.B/*", "/c.C/M"}, security.Call{Caller: id("/x"), Method: "/b.B/N"}},
		{"HTTPRules", security.HTTPRules, [3]string{"GET /a", "/b/**", "POST /c"}, security.Call{Caller: id("/x"), Method: "GET", Path: "/b/1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			asked := map[string]int{}
			counting := func(name string) spiffeid.Matcher {
				return func(spiffeid.ID) error {
					asked[name]++
					return errors.New("no")
				}
			}
			authz, err := tc.build(
				security.Refuse("a", counting("a"), tc.patterns[0]),
				security.Allow("b", counting("b"), tc.patterns[1]),
				security.Allow("c", counting("c"), tc.patterns[2]),
			)
			if err != nil {
				t.Fatal(err)
			}
			if err := authz(context.Background(), tc.call); err == nil {
				t.Fatal("allowed, want default deny")
			}
			if diff := cmp.Diff(map[string]int{"b": 1}, asked); diff != "" {
				t.Errorf("matchers asked (-want +got):\n%s", diff)
			}
		})
	}
}
