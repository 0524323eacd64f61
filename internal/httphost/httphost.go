// Package httphost checks and normalizes the Host of HTTP requests, for the
// mesh's HTTP server (which refuses a malformed Host) and for the host
// patterns of security.HTTPRules, which match the normalized form. Every
// function is safe for concurrent use.
package httphost

import (
	"errors"
	"fmt"
	"strings"
)

// Normalize returns host (with its port, if any) in the form HTTP
// authorization rules compare: lower-case, without a trailing dot on the
// name.
func Normalize(host string) string {
	host = strings.ToLower(host)
	name, port := host, ""
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.Contains(host[i:], "]") {
		name, port = host[:i], host[i:]
	}
	return strings.TrimSuffix(name, ".") + port
}

// Check reports whether host (a Host header or :authority, as in
// http.Request.Host) is one that host patterns can judge unambiguously:
// empty, or a DNS name of ASCII letters, digits, "-", "_" and "." (an
// internationalized name in its "xn--" form), an IPv4 address or a
// bracketed IPv6 address without a zone, optionally followed by ":" and a
// port of 1 to 5 digits. Anything else (NUL, control characters, spaces,
// non-ASCII or invalid UTF-8, "%", "/", "@", an empty port) gets an error
// saying what. The mesh's HTTP server answers such a request with 400.
func Check(host string) error {
	if host == "" {
		return nil
	}
	name, port, hasPort := host, "", false
	if host[0] == '[' {
		end := strings.IndexByte(host, ']')
		if end < 0 {
			return errors.New("Host: IPv6 literal without \"]\"")
		}
		name = host[1:end]
		if rest := host[end+1:]; rest != "" {
			if rest[0] != ':' {
				return errors.New("Host: want \"[ipv6]\" or \"[ipv6]:port\"")
			}
			port, hasPort = rest[1:], true
		}
		if name == "" {
			return errors.New("Host: empty IPv6 literal")
		}
		for i := 0; i < len(name); i++ {
			if c := name[i]; !isHex(c) && c != ':' && c != '.' {
				return fmt.Errorf("Host: byte %s in an IPv6 literal: want hex digits, \":\" and \".\" (no zone)", byteName(c))
			}
		}
	} else {
		if i := strings.LastIndexByte(host, ':'); i >= 0 {
			name, port, hasPort = host[:i], host[i+1:], true
		}
		if name == "" {
			return errors.New("Host: empty host name")
		}
		for i := 0; i < len(name); i++ {
			c := name[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_') {
				return fmt.Errorf("Host: byte %s in the host name: want ASCII letters, digits, \"-\", \"_\" and \".\" (internationalized names in their xn-- form)", byteName(c))
			}
		}
	}
	if hasPort {
		if port == "" || len(port) > 5 {
			return errors.New("Host: the port must be 1 to 5 digits")
		}
		for i := 0; i < len(port); i++ {
			if port[i] < '0' || port[i] > '9' {
				return fmt.Errorf("Host: byte %s in the port: want digits", byteName(port[i]))
			}
		}
	}
	return nil
}

// byteName shows c in an error: quoted if printable ASCII, else in hex.
func byteName(c byte) string {
	if c > 0x20 && c < 0x7f {
		return fmt.Sprintf("%q", c)
	}
	return fmt.Sprintf("0x%02X", c)
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
