package security_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/gridmesh/gridmesh/security"
)

func TestHTTPRulesDecide(t *testing.T) {
	authz, err := security.HTTPRules(
		security.Allow("gateway-reads", spiffeid.MatchID(id("/gateway")), "GET /v1/trades", "GET /v1/lots/*/holdings", "GET /v1/reports/*.json"),
		security.Allow("settlement-orders", spiffeid.MatchID(id("/settlement")), "POST /v1/orders/**"),
		security.Allow("ops", security.PathPrefix(id("/ops")), "*"),
		security.Allow("admin-host", spiffeid.MatchID(id("/admin")), "admin.example.org/**"),
		security.Allow("any-host-port", spiffeid.MatchID(id("/probe")), "GET *.example.org:8443/healthz"),
		security.Refuse("no-interns", spiffeid.MatchID(id("/ops/intern")), "/ops/**"),
	)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		caller       string
		method, host string
		path         string
		want         string // "" allowed, else the deciding rule
	}{
		{"/gateway", "GET", "", "/v1/trades", ""},
		{"/gateway", "HEAD", "", "/v1/trades", ""},
		{"/gateway", "POST", "", "/v1/trades", "default deny"},
		{"/gateway", "GET", "", "/v1/trades/", "default deny"},
		{"/gateway", "GET", "", "/v1/trades/1", "default deny"},
		{"/gateway", "GET", "", "/v1/lots/42/holdings", ""},
		{"/gateway", "GET", "", "/v1/lots/42/x/holdings", "default deny"},
		{"/gateway", "GET", "", "/v1/lots//holdings", "default deny"},
		{"/gateway", "GET", "", "/v1/reports/q3.json", ""},
		{"/gateway", "GET", "", "/v1/reports/q3.json.exe", "default deny"},
		{"/settlement", "POST", "", "/v1/orders", ""},
		{"/settlement", "POST", "", "/v1/orders/7/fill", ""},
		{"/settlement", "POST", "", "/v1/ordersX", "default deny"},
		{"/settlement", "GET", "", "/v1/orders", "default deny"},
		{"/ops/alice", "DELETE", "", "/anything", ""},
		{"/ops/intern", "GET", "", "/ops", "rule no-interns"},
		{"/ops/intern", "GET", "", "/ops/x", "rule no-interns"},
		{"/ops/intern", "GET", "", "/opsx", ""},
		{"/admin", "GET", "admin.example.org", "/x", ""},
		{"/admin", "GET", "ADMIN.Example.Org.", "/x", ""},
		{"/admin", "GET", "admin.example.org:8443", "/x", ""},
		{"/admin", "GET", "other.example.org", "/x", "default deny"},
		{"/admin", "GET", "", "/x", "default deny"},
		{"/probe", "GET", "a.example.org:8443", "/healthz", ""},
		{"/probe", "GET", "a.example.org:9000", "/healthz", "default deny"},
		{"/probe", "GET", "example.org:8443", "/healthz", "default deny"},
		{"/stranger", "GET", "", "/v1/trades", "default deny"},
	}
	for _, tc := range tests {
		t.Run(tc.caller+" "+tc.method+" "+tc.host+tc.path, func(t *testing.T) {
			err := authz(context.Background(), security.Call{Caller: id(tc.caller), Method: tc.method, Path: tc.path, Host: tc.host})
			got := ""
			var denied *security.DeniedError
			if errors.As(err, &denied) {
				got = denied.Rule
				if want := tc.method + " " + tc.path; denied.Target != want {
					t.Errorf("Target = %q, want %q", denied.Target, want)
				}
			} else if err != nil {
				t.Fatalf("error %v is not a *DeniedError", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("decision (-want +got):\n%s", diff)
			}
		})
	}
}

func TestHTTPRulesDenyGRPCCalls(t *testing.T) {
	authz, err := security.HTTPRules(security.Allow("all", spiffeid.MatchAny(), "*"))
	if err != nil {
		t.Fatal(err)
	}
	if err := authz(context.Background(), security.Call{Caller: id("/a"), Method: "/pkg.S/M"}); err == nil {
		t.Error("an HTTP rule allowed a gRPC call")
	}
}

func TestHTTPPatternErrorsSayTheForm(t *testing.T) {
	for _, p := range []string{
		"get /x",         // lower-case method
		"GET x",          // no path
		"/a//b",          // not normalized
		"/a/../b",        // not normalized
		"/a%2fb",         // refused by the normalizer
		"/a/**/b",        // ** not last
		"/a**",           // ** inside a segment
		"ex*ample.org/x", // bad host wildcard
		"/a//",           // subtree of a path that is not normalized
		"/a/{$}/b",       // {$} not last
		"/a/{x}",         // ServeMux wildcards are not supported: use *
		"/a/{x...}",      // nor this: use /a/ or /a/**
		"/a/%C0%AE",      // invalid UTF-8
		"/\uff41dmin",    // not NFKC
	} {
		_, err := security.HTTPRules(security.Allow("bad", spiffeid.MatchAny(), p))
		if err == nil {
			t.Errorf("HTTPRules accepted pattern %q, want an error", p)
			continue
		}
		if !strings.Contains(err.Error(), fmt.Sprintf("%q", p)) || !strings.Contains(err.Error(), `rule 0 ("bad")`) {
			t.Errorf("error %q does not name the rule and the pattern %q", err, p)
		}
	}
	for _, p := range []string{"*", "GET *", "/", "/**", "/{$}", "/a/", "/a/{$}", "/a/*/", "/a/*/b", "POST /a/**", "api.example.org/x", "*.example.org:8443/x", "/a%20b", "/a;b", "/a%25b", "/caf%C3%A9/"} {
		if _, err := security.HTTPRules(security.Allow("good", spiffeid.MatchAny(), p)); err != nil {
			t.Errorf("HTTPRules refused pattern %q: %v", p, err)
		}
	}
}

// TestHTTPPatternSemantics is the table of what a pattern's path matches:
// ServeMux's (a trailing slash is the subtree, "{$}" ends it), plus "*"
// for one segment and "/**" for a path and its subtree.
func TestHTTPPatternSemantics(t *testing.T) {
	tests := []struct {
		pattern, path string
		want          bool
	}{
		{"/public", "/public", true},
		{"/public", "/public/", false},
		{"/public", "/public/a", false},
		{"/public", "/publicX", false},
		{"/public/", "/public", false},
		{"/public/", "/public/", true},
		{"/public/", "/public/a", true},
		{"/public/", "/public/a/b/", true},
		{"/public/", "/publicX", false},
		{"/public/", "/publicX/a", false},
		{"/public/", "/other/public/", false},
		{"/public/{$}", "/public/", true},
		{"/public/{$}", "/public", false},
		{"/public/{$}", "/public/a", false},
		{"/public/*", "/public/a", true},
		{"/public/*", "/public/", false},
		{"/public/*", "/public", false},
		{"/public/*", "/public/a/b", false},
		{"/public/*", "/public/a/", false},
		{"/public/*/", "/public/a/", true},
		{"/public/*/", "/public/a/b", true},
		{"/public/*/", "/public/a", false},
		{"/public/*/{$}", "/public/a/", true},
		{"/public/*/{$}", "/public/a/b", false},
		{"/public/**", "/public", true},
		{"/public/**", "/public/", true},
		{"/public/**", "/public/a/b", true},
		{"/public/**", "/publicX", false},
		{"/public/*/**", "/public", false},
		{"/public/*/**", "/public/a", true},
		{"/public/*/**", "/public/a/b", true},
		{"/v1/*.json", "/v1/a.json", true},
		{"/v1/*.json", "/v1/.json", true},
		{"/v1/*.json", "/v1/a.json/x", false},
		{"/v1/*.json", "/v1/a.jsonx", false},
		{"/", "/", true},
		{"/", "/anything/at/all", true},
		{"/{$}", "/", true},
		{"/{$}", "/a", false},
		{"/**", "/", true},
		{"/**", "/a/b", true},
		{"/a;b", "/a;b", true},
		{"/a;b", "/a", false},
		{"/caf%C3%A9/", "/caf%C3%A9/x", true},
		{"/caf%C3%A9/", "/cafe/x", false},
	}
	for _, tc := range tests {
		t.Run(tc.pattern+" "+tc.path, func(t *testing.T) {
			authz, err := security.HTTPRules(security.Allow("p", spiffeid.MatchAny(), tc.pattern))
			if err != nil {
				t.Fatal(err)
			}
			got := authz(context.Background(), security.Call{Caller: id("/c"), Method: "GET", Path: tc.path}) == nil
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("pattern %q on %q (-want +got):\n%s", tc.pattern, tc.path, diff)
			}
		})
	}
	t.Logf("pattern semantics table: %d cases", len(tests))
}
