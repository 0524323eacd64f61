package security_test

import (
	"context"
	"errors"
	"net/url"
	"path"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/text/unicode/norm"

	"github.com/gridmesh/gridmesh/security"
)

const (
	strict  = security.PathStrict
	params  = security.PathAllowParameters
	delims  = security.PathAllowEncodedDelimiters
	unicode = security.PathNormalizeUnicode
	all     = params | delims | unicode
)

// normalizationCases are drawn from published mesh and proxy authorization
// bypasses: double slashes, encoded slashes and backslashes, dot segments
// plain and encoded, Tomcat's "..;", double encoding, overlong UTF-8,
// Unicode compatibility characters, fragments, NUL, and friends. want ""
// means the path must be refused under policy.
var normalizationCases = []struct {
	name   string
	policy security.PathPolicy
	in     string
	want   string
}{
	{"plain", strict, "/admin", "/admin"},
	{"root", strict, "/", "/"},
	{"trailing slash kept", strict, "/admin/", "/admin/"},
	{"double slash", strict, "//admin", "/admin"},
	{"many slashes", strict, "///admin///users//", "/admin/users/"},
	{"inner double slash", strict, "/public//../admin", "/admin"},
	{"dot segment", strict, "/./admin", "/admin"},
	{"dot-dot segment", strict, "/public/../admin", "/admin"},
	{"dot-dot above root", strict, "/../../admin", "/admin"},
	{"trailing dot", strict, "/admin/.", "/admin/"},
	{"trailing dot-dot", strict, "/admin/users/..", "/admin/"},
	{"dot-dot to root", strict, "/a/..", "/"},
	{"encoded dot", strict, "/%2e/admin", "/admin"},
	{"encoded dot-dot lower", strict, "/public/%2e%2e/admin", "/admin"},
	{"encoded dot-dot upper", strict, "/public/%2E%2E/admin", "/admin"},
	{"half encoded dot-dot", strict, "/public/.%2e/admin", "/admin"},
	{"encoded letters", strict, "/%61dmin", "/admin"},
	{"encoded letters upper hex", strict, "/%41DMIN", "/ADMIN"},
	{"encoded tilde and dash", strict, "/%7Euser/a%2Db", "/~user/a-b"},
	{"reserved escape kept, hex upper", strict, "/a%3ab", "/a%3Ab"},
	{"space encoded", strict, "/a b", "/a%20b"},
	{"three dots literal", strict, "/.../admin", "/.../admin"},
	{"dot-dot-x literal", strict, "/..x/admin", "/..x/admin"},
	{"encoded slash", strict, "/public%2F..%2Fadmin", ""},
	{"encoded slash lower", all, "/admin%2fusers", ""},
	{"encoded backslash", all, "/public%5C..%5Cadmin", ""},
	{"raw backslash", all, "/public\\..\\admin", ""},
	{"fragment", all, "/public#/../admin", ""},
	{"query in path", all, "/public?x=/admin", ""},
	{"invalid escape", all, "/admin%zz", ""},
	{"truncated escape", all, "/admin%2", ""},
	{"lone percent", all, "/admin%", ""},
	{"IIS %u escape", all, "/%u002e%u002e/admin", ""},
	{"relative", all, "admin", ""},
	{"empty", all, "", ""},
	{"asterisk form", all, "*", ""},
	{"authority form", all, "api:443", ""},

	// Double encoding: an encoded "%" (and "?", "#") changes meaning when
	// decoded once more.
	{"double-encoded slash", strict, "/admin%252F", ""},
	{"double-encoded dot-dot", strict, "/public/%252e%252e/admin", ""},
	{"double-encoded dot-dot upper", strict, "/public/%252E%252E/admin", ""},
	{"double-encoded with encoded digits", strict, "/public/%25%32%65%25%32%65/admin", ""},
	{"triple-encoded slash", strict, "/public%25252F..%25252Fadmin", ""},
	{"double-encoded backslash", strict, "/public%255C..%255Cadmin", ""},
	{"double-encoded NUL", strict, "/admin%2500", ""},
	{"encoded percent alone", strict, "/100%25", ""},
	{"encoded question mark", strict, "/admin%3F.css", ""},
	{"encoded fragment", strict, "/public%23/../admin", ""},
	{"encoded percent kept when allowed", delims, "/admin%252F", "/admin%252F"},
	{"double-encoded dot-dot kept when allowed", delims, "/public/%252e%252e/admin", "/public/%252e%252e/admin"},
	{"encoded question mark kept when allowed", delims, "/a%3fb", "/a%3Fb"},
	{"encoded fragment kept when allowed", delims, "/public%23/../admin", "/admin"},

	// Invalid UTF-8, overlong forms of "." and "/" first.
	{"overlong dot 2 bytes", all, "/public/%c0%ae%c0%ae/admin", ""},
	{"overlong slash 2 bytes", all, "/public%c0%afadmin", ""},
	{"overlong dot 3 bytes", all, "/public/%e0%80%ae%e0%80%ae/admin", ""},
	{"overlong slash 3 bytes", all, "/public%e0%80%afadmin", ""},
	{"overlong dot 4 bytes", all, "/public/%f0%80%80%ae/admin", ""},
	{"overlong dot raw bytes", all, "/public/\xc0\xae\xc0\xae/admin", ""},
	{"overlong slash raw bytes", all, "/public\xc0\xafadmin", ""},
	{"overlong NUL (modified UTF-8)", all, "/admin%c0%80", ""},
	{"lone continuation byte", all, "/admin%80", ""},
	{"truncated sequence", all, "/caf%c3", ""},
	{"UTF-16 surrogate", all, "/%ed%a0%80", ""},
	{"beyond U+10FFFF", all, "/%f4%90%80%80", ""},
	{"Latin-1 byte", all, "/caf%e9", ""},
	{"valid UTF-8 raw encoded", strict, "/caf\xc3\xa9", "/caf%C3%A9"},
	{"valid UTF-8 escaped lower", strict, "/caf%c3%a9", "/caf%C3%A9"},
	{"valid CJK", strict, "/%E6%96%87%E5%AD%97", "/%E6%96%87%E5%AD%97"},

	// Unicode that NFKC changes: refused by default, normalized with
	// PathNormalizeUnicode, refused always when it becomes a separator.
	{"full-width dots", strict, "/public/%EF%BC%8E%EF%BC%8E/admin", ""},
	{"one-dot leader pair", strict, "/public/%E2%80%A4%E2%80%A4/admin", ""},
	{"two-dot leader", strict, "/public/%E2%80%A5/admin", ""},
	{"ellipsis", strict, "/public/%E2%80%A6", ""},
	{"small full stop", strict, "/public/%EF%B9%92%EF%B9%92/admin", ""},
	{"full-width letters", strict, "/%EF%BD%81dmin", ""},
	{"ligature", strict, "/%EF%AC%81le", ""},
	{"decomposed e-acute (NFD)", strict, "/cafe%CC%81", ""},
	{"full-width dots normalized", unicode, "/public/%EF%BC%8E%EF%BC%8E/admin", "/admin"},
	{"two-dot leader normalized", unicode, "/public/%E2%80%A5/admin", "/admin"},
	{"one-dot leader normalized", unicode, "/public/\u2024/x", "/public/x"},
	{"full-width letters normalized", unicode, "/\uff41dmin", "/admin"},
	{"decomposed e-acute composed", unicode, "/cafe%CC%81", "/caf%C3%A9"},
	{"no-break space normalized", unicode, "/a%C2%A0b", "/a%20b"},
	{"full-width solidus", all, "/public%EF%BC%8Fadmin", ""},
	{"full-width solidus raw", all, "/public\uff0f..\uff0fadmin", ""},
	{"full-width reverse solidus", all, "/public%EF%BC%BC..%EF%BC%BCadmin", ""},
	{"small reverse solidus", all, "/public\ufe68admin", ""},
	{"full-width percent", all, "/admin%EF%BC%85", ""},
	{"full-width question mark", all, "/admin\uff1f", ""},
	{"full-width number sign", all, "/admin\uff03", ""},
	{"full-width semicolon", all, "/admin\uff1bx", ""},
	{"Greek question mark (is ';')", all, "/admin\u037ex", ""},

	// Path parameters: refused by default, literal with PathAllowParameters,
	// refused on dot segments whatever the policy.
	{"semicolon parameter", strict, "/admin;x=1", ""},
	{"semicolon after public", strict, "/public;x/../admin", ""},
	{"semicolon alone", strict, "/public/;", ""},
	{"encoded semicolon", strict, "/a%3bb", ""},
	{"semicolon parameter allowed", params, "/admin;x=1", "/admin;x=1"},
	{"encoded semicolon allowed", params, "/a%3bb", "/a%3Bb"},
	{"dot-dot-semicolon refused", all, "/public/..;/admin", ""},
	{"dot-semicolon refused", all, "/public/.;x/admin", ""},
	{"encoded dot-dot-semicolon refused", all, "/public/%2e%2e;/admin", ""},
	{"dot-dot-encoded-semicolon refused", all, "/public/..%3b/admin", ""},

	// NUL and control characters, raw and encoded.
	{"encoded NUL", all, "/admin%00.html", ""},
	{"raw NUL", all, "/admin\x00", ""},
	{"encoded newline", all, "/admin%0a", ""},
	{"raw tab", all, "/ad\tmin", ""},
	{"encoded DEL", all, "/admin%7f", ""},
	{"raw DEL", all, "/admin\x7f", ""},
}

func TestNormalizePathTable(t *testing.T) {
	for _, tc := range normalizationCases {
		t.Run(tc.policy.String()+"/"+tc.name, func(t *testing.T) {
			got, err := tc.policy.Normalize(tc.in)
			if tc.want == "" {
				var pe *security.PathError
				if !errors.As(err, &pe) {
					t.Fatalf("%v.Normalize(%q) = %q, %v; want a *PathError", tc.policy, tc.in, got, err)
				}
				if pe.Path != tc.in || pe.Reason == "" {
					t.Errorf("PathError = %+v, want the path as received and a reason", pe)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v.Normalize(%q): %v", tc.policy, tc.in, err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("%v.Normalize(%q) mismatch (-want +got):\n%s", tc.policy, tc.in, diff)
			}
			again, err := tc.policy.Normalize(got)
			if err != nil || again != got {
				t.Errorf("not idempotent: Normalize(%q) = %q, %v", got, again, err)
			}
		})
	}
	t.Logf("normalization table: %d cases", len(normalizationCases))
}

// TestNormalizePathStrictIsAFixedPoint checks the default policy's promise
// on every accepted path of the table: the path a handler reads
// (URL.Path, the decoded path) is unchanged by one more percent-decode and
// by NFKC.
func TestNormalizePathStrictIsAFixedPoint(t *testing.T) {
	for _, tc := range normalizationCases {
		got, err := security.PathStrict.Normalize(tc.in)
		if err != nil {
			continue
		}
		dec, err := url.PathUnescape(got)
		if err != nil {
			t.Fatalf("%q -> %q does not decode: %v", tc.in, got, err)
		}
		if again, err := url.PathUnescape(dec); err != nil || again != dec {
			t.Errorf("%q -> %q: decoding once more gives %q, %v", tc.in, dec, again, err)
		}
		if nf := norm.NFKC.String(dec); nf != dec {
			t.Errorf("%q -> %q: NFKC gives %q", tc.in, dec, nf)
		}
	}
}

func TestPathPolicyStringAndUnknownFlags(t *testing.T) {
	for p, want := range map[security.PathPolicy]string{
		strict:           "PathStrict",
		params | unicode: "PathAllowParameters|PathNormalizeUnicode",
		all:              "PathAllowParameters|PathAllowEncodedDelimiters|PathNormalizeUnicode",
	} {
		if got := p.String(); got != want {
			t.Errorf("String() = %q, want %q", got, want)
		}
		if _, err := p.Normalize("/a"); err != nil {
			t.Errorf("%v.Normalize(\"/a\"): %v", p, err)
		}
	}
	// A policy with a flag that is none of the constants refuses every
	// path, plain ones too, naming the flags to combine.
	for _, path := range []string{"/a", "/a//b"} {
		_, err := security.PathPolicy(0x80).Normalize(path)
		var pe *security.PathError
		if err == nil || errors.As(err, &pe) || !strings.Contains(err.Error(), "PathStrict, PathAllowParameters") {
			t.Errorf("Normalize(%q) under an unknown flag = %v, want an error (not a *PathError) naming the flags", path, err)
		}
	}
}

// FuzzNormalizePathDenyRule checks, under each path policy, that the
// authorizer's decision on an accepted path equals its decision on that
// path after one more percent-decode and after Unicode NFKC (the steps a
// handler, framework or backend behind the mesh may take), so that no
// input is judged as one path and served as another. It also checks
// idempotence, that the output holds nothing ambiguous, and that no input
// is allowed past a deny rule on /admin/** while a server that decodes the
// raw path once (or twice, or with NFKC) and cleans it would serve
// something under /admin. In CI the seed corpus runs as a normal test;
// run it longer with
//
//	go test -run '^$' -fuzz FuzzNormalizePathDenyRule -fuzztime 5m ./security/
func FuzzNormalizePathDenyRule(f *testing.F) {
	for _, tc := range normalizationCases {
		f.Add(tc.in)
	}
	for _, s := range []string{"/public/\u2025/admin", "/public/%EF%BC%8E./admin", "/public;x/../admin", "/public/%25%32%65%25%32%65/admin", "/\u1e9b\u0323", "/a\u0338=\u0338"} {
		f.Add(s)
	}
	deciders := []security.Authorizer{}
	for _, rules := range [][]security.Rule{
		{security.Refuse("no-admin", spiffeid.MatchAny(), "/admin/**"), security.Allow("rest", spiffeid.MatchAny(), "*")},
		{security.Allow("public", spiffeid.MatchAny(), "/public/")},
		{security.Allow("json", spiffeid.MatchAny(), "GET /v1/*/x.json", "/caf%C3%A9")},
	} {
		a, err := security.HTTPRules(rules...)
		if err != nil {
			f.Fatal(err)
		}
		deciders = append(deciders, a)
	}
	// decide returns the decisions of every decider on a canonical path.
	decide := func(p string) (out [3]bool) {
		for i, a := range deciders {
			out[i] = a(context.Background(), security.Call{Caller: id("/fuzz"), Method: "GET", Path: p}) == nil
		}
		return out
	}
	// decideDecoded returns the decisions on a decoded path x as the mesh
	// would make them if x arrived on the wire, without normalizing
	// Unicode: an x the mesh cannot express is an error.
	decideDecoded := func(x string) ([3]bool, error) {
		p, err := (params | delims).Normalize(escapeDecoded(x))
		return decide(p), err
	}
	policies := []security.PathPolicy{strict, params, unicode, params | unicode, delims, all}
	underAdmin := func(p string) bool { return p == "/admin" || strings.HasPrefix(p, "/admin/") }
	f.Fuzz(func(t *testing.T, in string) {
		for _, pol := range policies {
			got, err := pol.Normalize(in)
			if err != nil {
				continue
			}
			again, err := pol.Normalize(got)
			if err != nil || again != got {
				t.Fatalf("%v: not idempotent: %q -> %q -> %q, %v", pol, in, got, again, err)
			}
			for _, bad := range []string{"//", "/./", "/../", "#", "?", "\\", "\x00"} {
				if strings.Contains(got, bad) {
					t.Fatalf("%v: %q -> %q contains %q", pol, in, got, bad)
				}
			}
			if strings.HasSuffix(got, "/.") || strings.HasSuffix(got, "/..") {
				t.Fatalf("%v: %q -> %q ends in a dot segment", pol, in, got)
			}
			upper := strings.ToUpper(got)
			for _, bad := range []string{"%2F", "%5C", "%00", "%2E"} {
				if strings.Contains(upper, bad) {
					t.Fatalf("%v: %q -> %q contains %s", pol, in, got, bad)
				}
			}
			// The handler reads dec as URL.Path.
			dec, err := url.PathUnescape(got)
			if err != nil {
				t.Fatalf("%v: %q -> %q does not decode: %v", pol, in, got, err)
			}
			want := decide(got)
			if pol&delims == 0 {
				twice, err := url.PathUnescape(dec)
				if err != nil {
					t.Fatalf("%v: %q -> %q: one more decode fails: %v", pol, in, dec, err)
				}
				if d, err := decideDecoded(twice); err != nil || d != want {
					t.Fatalf("%v: %q -> %q: decided %v, after one more decode (%q) %v, %v", pol, in, got, want, twice, d, err)
				}
			}
			nf := norm.NFKC.String(dec)
			if d, err := decideDecoded(nf); err != nil || d != want {
				t.Fatalf("%v: %q -> %q: decided %v, after NFKC (%q) %v, %v", pol, in, got, want, nf, d, err)
			}
			if pol != strict {
				continue
			}
			// What a server that decodes the raw path once (or twice, or
			// once and with NFKC) and cleans it would serve.
			once, err := url.PathUnescape(in)
			if err != nil || !strings.HasPrefix(once, "/") {
				continue
			}
			twice, _ := url.PathUnescape(once)
			for _, naive := range []string{once, twice, norm.NFKC.String(once)} {
				if underAdmin(path.Clean(naive)) && want[0] {
					t.Fatalf("bypass: %q is allowed as %q but a decoding server serves %q", in, got, path.Clean(naive))
				}
			}
		}
	})
}

// escapeDecoded percent-encodes a decoded path for the wire: every byte
// that is not "/" or an RFC 3986 path character, "%" included.
func escapeDecoded(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '/' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~!$&'()*+,;=:@", c) >= 0 {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte("0123456789ABCDEF"[c>>4])
		b.WriteByte("0123456789ABCDEF"[c&15])
	}
	return b.String()
}

func BenchmarkNormalizePath(b *testing.B) {
	for _, p := range []string{
		"/v1/trades/42",
		"//v1/./lots/%61bc/../holdings/",
		"/v1/a%20very%20long/path/with/many/segments/and/escapes%3A/x",
		"/v1/caf%C3%A9/%E6%96%87%E5%AD%97",
	} {
		b.Run(p, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := security.PathStrict.Normalize(p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("NFKC /v1/\uff41dmin/x", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := unicode.Normalize("/v1/\uff41dmin/x"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkHTTPRules(b *testing.B) {
	authz, err := security.HTTPRules(
		security.Refuse("no-admin", spiffeid.MatchAny(), "/admin/**"),
		security.Allow("reads", spiffeid.MatchID(id("/gateway")), "GET /v1/trades/*", "GET /v1/lots/*/holdings"),
		security.Allow("ops", security.PathPrefix(id("/ops")), "*"),
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
