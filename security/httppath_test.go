package security_test

import (
	"context"
	"errors"
	"net/url"
	"path"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gridmesh/gridmesh/security"
)

// normalizationCases are drawn from published mesh and proxy authorization
// bypasses: double slashes, encoded slashes and backslashes, dot segments
// plain and encoded, Tomcat's "..;", fragments, NUL, and friends. want ""
// means the path must be refused.
var normalizationCases = []struct {
	name, in, want string
}{
	{"plain", "/admin", "/admin"},
	{"root", "/", "/"},
	{"trailing slash kept", "/admin/", "/admin/"},
	{"double slash", "//admin", "/admin"},
	{"many slashes", "///admin///users//", "/admin/users/"},
	{"inner double slash", "/public//../admin", "/admin"},
	{"dot segment", "/./admin", "/admin"},
	{"dot-dot segment", "/public/../admin", "/admin"},
	{"dot-dot above root", "/../../admin", "/admin"},
	{"trailing dot", "/admin/.", "/admin/"},
	{"trailing dot-dot", "/admin/users/..", "/admin/"},
	{"encoded dot", "/%2e/admin", "/admin"},
	{"encoded dot-dot lower", "/public/%2e%2e/admin", "/admin"},
	{"encoded dot-dot upper", "/public/%2E%2E/admin", "/admin"},
	{"half encoded dot-dot", "/public/.%2e/admin", "/admin"},
	{"encoded letters", "/%61dmin", "/admin"},
	{"encoded letters upper hex", "/%41DMIN", "/ADMIN"},
	{"encoded tilde and dash", "/%7Euser/a%2Db", "/~user/a-b"},
	{"reserved escape kept, hex upper", "/a%3bb", "/a%3Bb"},
	{"encoded percent kept (double encoding)", "/admin%252F", "/admin%252F"},
	{"double-encoded dot-dot stays literal", "/public/%252e%252e/admin", "/public/%252e%252e/admin"},
	{"space encoded", "/a b", "/a%20b"},
	{"non-ASCII encoded", "/caf\xc3\xa9", "/caf%C3%A9"},
	{"overlong dot stays literal", "/%c0%ae%c0%ae/admin", "/%C0%AE%C0%AE/admin"},
	{"semicolon parameter is literal", "/admin;x=1", "/admin;x=1"},
	{"dot-dot-semicolon refused", "/public/..;/admin", ""},
	{"dot-semicolon refused", "/public/.;x/admin", ""},
	{"encoded dot-dot-semicolon refused", "/public/%2e%2e;/admin", ""},
	{"encoded slash", "/public%2F..%2Fadmin", ""},
	{"encoded slash lower", "/admin%2fusers", ""},
	{"encoded backslash", "/public%5C..%5Cadmin", ""},
	{"raw backslash", "/public\\..\\admin", ""},
	{"encoded NUL", "/admin%00.html", ""},
	{"raw NUL", "/admin\x00", ""},
	{"encoded newline", "/admin%0a", ""},
	{"raw tab", "/ad\tmin", ""},
	{"encoded DEL", "/admin%7f", ""},
	{"fragment", "/public#/../admin", ""},
	{"encoded fragment kept", "/public%23/../admin", "/admin"},
	{"query in path", "/public?x=/admin", ""},
	{"invalid escape", "/admin%zz", ""},
	{"truncated escape", "/admin%2", ""},
	{"lone percent", "/admin%", ""},
	{"relative", "admin", ""},
	{"empty", "", ""},
	{"asterisk form", "*", ""},
	{"three dots literal", "/.../admin", "/.../admin"},
	{"dot-dot-x literal", "/..x/admin", "/..x/admin"},
}

func TestNormalizePathTable(t *testing.T) {
	for _, tc := range normalizationCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := security.NormalizePath(tc.in)
			if tc.want == "" {
				var pe *security.PathError
				if !errors.As(err, &pe) {
					t.Fatalf("NormalizePath(%q) = %q, %v; want a *PathError", tc.in, got, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("NormalizePath(%q): %v", tc.in, err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("NormalizePath(%q) mismatch (-want +got):\n%s", tc.in, diff)
			}
			again, err := security.NormalizePath(got)
			if err != nil || again != got {
				t.Errorf("not idempotent: NormalizePath(%q) = %q, %v", got, again, err)
			}
		})
	}
	t.Logf("normalization table: %d cases", len(normalizationCases))
}

func TestNormalizeHost(t *testing.T) {
	for in, want := range map[string]string{
		"API.Example.ORG":       "api.example.org",
		"api.example.org.":      "api.example.org",
		"API.example.org.:8443": "api.example.org:8443",
		"[::1]:80":              "[::1]:80",
		"[::1]":                 "[::1]",
	} {
		if got := security.NormalizeHost(in); got != want {
			t.Errorf("NormalizeHost(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzNormalizePathDenyRule checks the normalizer against a deny rule on
// /admin/**: no input may be allowed by the rule while a server that decodes
// the raw path once and cleans it (the naive reading) would serve something
// under /admin. It also checks idempotence and that the output holds nothing
// ambiguous. In CI the seed corpus runs as a normal test; run it longer with
//
//	go test -run '^$' -fuzz FuzzNormalizePathDenyRule -fuzztime 5m ./security/
func FuzzNormalizePathDenyRule(f *testing.F) {
	for _, tc := range normalizationCases {
		f.Add(tc.in)
	}
	authz, err := security.HTTPRules(
		security.RefuseHTTP("no-admin", security.AnyID(), "/admin/**"),
		security.AllowHTTP("rest", security.AnyID(), "*"),
	)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in string) {
		norm, err := security.NormalizePath(in)
		if err != nil {
			return
		}
		again, err := security.NormalizePath(norm)
		if err != nil || again != norm {
			t.Fatalf("not idempotent: %q -> %q -> %q, %v", in, norm, again, err)
		}
		for _, bad := range []string{"//", "/./", "/../", "#", "?", "\\", "\x00"} {
			if strings.Contains(norm, bad) {
				t.Fatalf("%q -> %q contains %q", in, norm, bad)
			}
		}
		if strings.HasSuffix(norm, "/.") || strings.HasSuffix(norm, "/..") {
			t.Fatalf("%q -> %q ends in a dot segment", in, norm)
		}
		upper := strings.ToUpper(norm)
		for _, bad := range []string{"%2F", "%5C", "%00", "%2E"} {
			if strings.Contains(upper, bad) {
				t.Fatalf("%q -> %q contains %s", in, norm, bad)
			}
		}
		denied := authz(context.Background(), security.Call{Caller: id("/fuzz"), Method: "GET", Path: norm}) != nil
		underAdmin := func(p string) bool { return p == "/admin" || strings.HasPrefix(p, "/admin/") }
		if underAdmin(norm) != denied {
			t.Fatalf("%q -> %q: denied=%v, under /admin=%v", in, norm, denied, underAdmin(norm))
		}
		// What a server that decodes once and cleans would serve.
		if naive, err := url.PathUnescape(in); err == nil && strings.HasPrefix(naive, "/") {
			if underAdmin(path.Clean(naive)) && !denied {
				t.Fatalf("bypass: %q is allowed as %q but a decoding server serves %q", in, norm, path.Clean(naive))
			}
		}
		// What the handler reads as URL.Path must be the checked path.
		if dec, err := url.PathUnescape(norm); err != nil || underAdmin(path.Clean(dec)) != denied {
			t.Fatalf("%q -> %q decodes to %q (%v), denied=%v", in, norm, dec, err, denied)
		}
	})
}

func BenchmarkNormalizePath(b *testing.B) {
	for _, p := range []string{"/v1/trades/42", "//v1/./lots/%61bc/../holdings/", "/v1/a%20very%20long/path/with/many/segments/and/escapes%3B/x"} {
		b.Run(p, func(b *testing.B) {
			for b.Loop() {
				if _, err := security.NormalizePath(p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkHTTPRules(b *testing.B) {
	authz, err := security.HTTPRules(
		security.RefuseHTTP("no-admin", security.AnyID(), "/admin/**"),
		security.AllowHTTP("reads", security.ExactID(id("/gateway")), "GET /v1/trades/*", "GET /v1/lots/*/holdings"),
		security.AllowHTTP("ops", security.PathPrefix(id("/ops")), "*"),
	)
	if err != nil {
		b.Fatal(err)
	}
	call := security.Call{Caller: id("/gateway"), Method: "GET", Path: "/v1/lots/42/holdings"}
	ctx := context.Background()
	for b.Loop() {
		if err := authz(ctx, call); err != nil {
			b.Fatal(err)
		}
	}
}
