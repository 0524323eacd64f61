package httphost_test

import (
	"strings"
	"testing"

	"github.com/gridmesh/gridmesh/internal/httphost"
)

func TestNormalize(t *testing.T) {
	for in, want := range map[string]string{
		"API.Example.ORG":       "api.example.org",
		"api.example.org.":      "api.example.org",
		"API.example.org.:8443": "api.example.org:8443",
		"[::1]:80":              "[::1]:80",
		"[::1]":                 "[::1]",
	} {
		if got := httphost.Normalize(in); got != want {
			t.Errorf("Normalize(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCheck(t *testing.T) {
	tests := []struct {
		host string
		ok   bool
	}{
		{"", true},
		{"api", true},
		{"api.example.org", true},
		{"API.Example.Org.:8443", true},
		{"xn--caf-dma.example", true},
		{"my_host", true},
		{"10.0.0.1:443", true},
		{"[::1]", true},
		{"[2001:db8::1]:8443", true},
		{"[::ffff:10.0.0.1]", true},
		{"admin.example.org\x00.evil", false},
		{"admin\x00", false},
		{"admin.example.org\r", false},
		{"admin\t.example.org", false},
		{"admin example.org", false},
		{"admin.example.org ", false},
		{"admin.example.org\x7f", false},
		{"caf\xc3\xa9.example.org", false},     // non-ASCII: use the xn-- form
		{"admin\xc0\xae.example.org", false},   // overlong "."
		{"\uff41dmin.example.org", false},      // full-width letters
		{"admin\uff0eexample.org", false},      // full-width dot
		{"admin%2eexample.org", false},         // escapes
		{"admin.example.org/x", false},         // a path
		{"user@admin.example.org", false},      // userinfo
		{"admin.example.org:", false},          // empty port
		{"admin.example.org:8443x", false},     // bad port
		{"admin.example.org:123456", false},    // long port
		{"admin.example.org:80:80", false},     // two ports
		{":80", false},                         // no name
		{"[::1", false},                        // unclosed
		{"[::1]x", false},                      // junk after literal
		{"[fe80::1%25eth0]", false},            // zone
		{"[]", false},                          // empty literal
		{"admin.example.org,other.org", false}, // list
		{"admin.example.org;x", false},         // parameter
		{"*.example.org", false},               // wildcard
		{"admin.example.org\xff", false},       // invalid UTF-8
		{"admin.example.org\u202e", false},     // bidi override
		{"admin.example.org\u200b", false},     // zero-width space
		{"admin.example.org\x00:443", false},   // NUL before the port
	}
	for _, tc := range tests {
		err := httphost.Check(tc.host)
		if (err == nil) != tc.ok {
			t.Errorf("Check(%q) = %v, want ok=%v", tc.host, err, tc.ok)
		}
		if err != nil && strings.Contains(err.Error(), tc.host) && len(tc.host) > 1 {
			t.Errorf("Check(%q) error %q echoes the host", tc.host, err)
		}
	}
}
