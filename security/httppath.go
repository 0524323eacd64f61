package security

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// PathError says why a request path was refused by PathPolicy.Normalize. The mesh's
// HTTP server answers it with 400 Bad Request and the reason.
type PathError struct {
	Path   string // the path as received
	Reason string // what made it ambiguous, e.g. "encoded slash (%2F)"
}

func (e *PathError) Error() string {
	return fmt.Sprintf("security: request path %q refused: %s", e.Path, e.Reason)
}

// PathPolicy says how PathPolicy.Normalize treats the classes of request
// paths that the code behind an authorization check (a framework, a
// handler, a backend the request is forwarded to) may read differently
// from the check. Each class is refused by default; a flag turns one class
// from refused into allowed or normalized, so a policy is PathStrict or
// flags combined with "|", like Envoy's normalize_path and
// path_with_escaped_slashes_action or Istio's pathNormalization levels.
// The mesh's HTTP server takes it with mesh.WithHTTPPathPolicy.
//
// Whatever the policy, Normalize always refuses what cannot be made
// unambiguous: encoded slashes and backslashes, raw backslashes, NUL and
// control characters, fragments, invalid escapes, invalid UTF-8 (which
// includes overlong encodings of "." and "/", such as %C0%AE and %C0%AF),
// Unicode compatibility characters that NFKC turns into a separator or a
// delimiter ("／", "＼", "％", "？", "＃", "；"), and dot segments with
// parameters ("..;"), which Java servers read as "..".
type PathPolicy uint8

const (
	// PathStrict, the default (zero value), refuses every class below, so
	// that the path the authorizer judged is a fixed point of one more
	// percent-decode and of Unicode NFKC: whatever the code behind the
	// check does with it, it reads the same path.
	PathStrict PathPolicy = 0

	// PathAllowParameters allows ";" (raw or %3B) in segments, as an
	// ordinary character that rules must match literally, as net/http
	// does. Without it, a path with ";" is refused: Tomcat and Spring drop
	// ";..." from each segment ("/admin;x" serves /admin) while others keep
	// it. Set it only if nothing behind the server strips path parameters.
	PathAllowParameters PathPolicy = 1 << 0

	// PathAllowEncodedDelimiters keeps the escapes %25 ("%"), %3F ("?")
	// and %23 ("#") as data, as net/http does. Without it they are
	// refused: a server that decodes the path once more turns
	// "/public%252E%252E/admin" into "/public/../admin", and one that
	// re-parses the decoded path cuts it at "?" or "#". Set it only if
	// nothing behind the server decodes the path twice or re-parses it.
	PathAllowEncodedDelimiters PathPolicy = 1 << 1

	// PathNormalizeUnicode applies Unicode NFKC to the decoded path, so
	// rules and handlers see "/public/../admin" for "/public/\u2025/admin"
	// (TWO DOT LEADER) and "/admin" for "/ａｄｍｉｎ" (full-width letters).
	// Without it, a path that NFKC changes is refused, since a framework
	// or file system that normalizes would read another path. Characters
	// that NFKC turns into "/", "\", "%", "?", "#" or ";" are refused
	// either way, as their encoded forms are.
	PathNormalizeUnicode PathPolicy = 1 << 2

	pathPolicyAll = PathAllowParameters | PathAllowEncodedDelimiters | PathNormalizeUnicode
)

var pathPolicyNames = [...]string{"PathAllowParameters", "PathAllowEncodedDelimiters", "PathNormalizeUnicode"}

// String returns the policy as Go source: "PathStrict" or flags joined
// with "|".
func (p PathPolicy) String() string {
	if p == PathStrict {
		return "PathStrict"
	}
	var names []string
	for i, n := range pathPolicyNames {
		if p&(1<<i) != 0 {
			names = append(names, n)
		}
	}
	if rest := p &^ pathPolicyAll; rest != 0 {
		names = append(names, fmt.Sprintf("PathPolicy(%#x)", uint8(rest)))
	}
	return strings.Join(names, "|")
}

// Normalize returns the canonical form of an HTTP request path as it
// arrived on the wire (escaped, without the query), the form on which HTTP
// authorization rules match and which the mesh hands to handlers:
//
//   - percent-escapes of unreserved characters (A-Z a-z 0-9 - . _ ~) are
//     decoded; every other escape is kept, with upper-case hex digits;
//     bytes that may not appear raw in a path (space, non-ASCII, "<>\"{}|^`[]")
//     are percent-encoded;
//   - runs of slashes are merged into one;
//   - "." and ".." segments are resolved (RFC 3986 section 5.2.4), also when
//     they were written %2E; ".." never climbs above the root;
//   - a trailing slash is kept;
//   - with PathNormalizeUnicode, the decoded path is put in NFKC first.
//
// It refuses with a *PathError what cannot be made unambiguous (see
// PathPolicy) and, for each class p does not allow, what p says. A path
// not starting with "/" (such as the "*" of "OPTIONS *" or the "host:port"
// of CONNECT) and a path holding "?" (pass the path only) are refused too.
//
// A policy holding a flag that is none of the PathPolicy constants
// refuses every path, with an error that is not a *PathError; the mesh's
// HTTP server refuses such a policy when it is built.
//
// The result r satisfies p.Normalize(r) == r. A plain path (no "%", ";",
// "//", dot segments or bytes that need escaping) is returned as is
// without allocating. It is safe for concurrent use.
func (p PathPolicy) Normalize(raw string) (string, error) {
	if rest := p &^ pathPolicyAll; rest != 0 {
		return "", fmt.Errorf("security: path policy %s: unknown flags %#x: combine PathStrict, PathAllowParameters, PathAllowEncodedDelimiters and PathNormalizeUnicode", p, uint8(rest))
	}
	if isPlainPath(raw) {
		return raw, nil
	}
	return p.normalize(raw, raw, 0)
}

// isPlainPath reports whether s is already canonical under every policy:
// it starts with "/", holds only bytes that stand for themselves in every
// reading (no "%" and no ";"), and has no empty or dot segment other than
// a trailing slash.
func isPlainPath(s string) bool {
	if s == "" || s[0] != '/' {
		return false
	}
	seg := 1 // start of the current segment
	for i := 1; i <= len(s); i++ {
		if i < len(s) && s[i] != '/' {
			if !plainByte[s[i]] {
				return false
			}
			continue
		}
		switch s[seg:i] {
		case ".", "..":
			return false
		case "":
			if i < len(s) {
				return false // "//"
			}
		}
		seg = i + 1
	}
	return true
}

// plainByte holds the bytes a canonical path keeps raw, but ';'.
var plainByte = func() (t [256]bool) {
	for c := 0; c < 256; c++ {
		t[c] = c != ';' && isPathChar(byte(c))
	}
	return t
}()

// normalize is Normalize's slow path. orig is the path as received, for
// errors; depth counts the passes after NFKC (at most one).
func (p PathPolicy) normalize(orig, raw string, depth int) (string, error) {
	refuse := func(reason string) (string, error) {
		return "", &PathError{Path: orig, Reason: reason}
	}
	switch {
	case raw == "*":
		return refuse("asterisk-form request target (\"OPTIONS *\"): only paths are served")
	case raw == "" || raw[0] != '/':
		return refuse("it must start with \"/\"")
	}
	// Pass 1: canonical escaping, byte by byte, into buf.
	buf := make([]byte, 0, len(raw)+8)
	nonASCII := false
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case c == '%':
			if i+2 >= len(raw) || !isHex(raw[i+1]) || !isHex(raw[i+2]) {
				end := min(i+3, len(raw))
				return refuse(fmt.Sprintf("invalid percent-escape %q", raw[i:end]))
			}
			v := unhex(raw[i+1])<<4 | unhex(raw[i+2])
			i += 2
			switch {
			case v == '/':
				return refuse("encoded slash (%2F) in a segment")
			case v == '\\':
				return refuse("encoded backslash (%5C) in a segment")
			case v < 0x20 || v == 0x7f:
				return refuse(fmt.Sprintf("encoded control character %%%02X", v))
			case (v == '%' || v == '?' || v == '#') && p&PathAllowEncodedDelimiters == 0:
				return refuse(fmt.Sprintf("encoded %q (%%%02X): a server that decodes the path once more or re-parses it reads another path (PathAllowEncodedDelimiters keeps it)", v, v))
			case v == ';' && p&PathAllowParameters == 0:
				return refuse("encoded \";\" (%3B): servers that strip path parameters read another path (PathAllowParameters allows it)")
			case v >= 0x80:
				nonASCII = true
				buf = appendEscape(buf, v)
			case isUnreserved(v):
				buf = append(buf, v)
			default:
				buf = appendEscape(buf, v)
			}
		case c == '#':
			return refuse("fragment (\"#\") in the request target")
		case c == '?':
			return refuse("query (\"?\") in the path")
		case c == '\\':
			return refuse("backslash in the path")
		case c < 0x20 || c == 0x7f:
			return refuse(fmt.Sprintf("control character 0x%02X", c))
		case c == ';' && p&PathAllowParameters == 0:
			return refuse("path parameter (\";\"): Tomcat and Spring drop \";...\" from a segment, other servers keep it (PathAllowParameters allows it)")
		case c >= 0x80:
			nonASCII = true
			buf = appendEscape(buf, c)
		case c == '/' || isPathChar(c):
			buf = append(buf, c)
		default:
			buf = appendEscape(buf, c)
		}
	}
	if nonASCII {
		dec := unescapeValid(buf)
		if !utf8.ValidString(dec) {
			return refuse("invalid UTF-8 (such as an overlong encoding of \".\" or \"/\") in the decoded path")
		}
		if !norm.NFKC.IsNormalString(dec) {
			if p&PathNormalizeUnicode == 0 || depth > 0 {
				return refuse(nfkcReason(dec) + " (PathNormalizeUnicode normalizes it)")
			}
			nf := norm.NFKC.String(dec)
			for _, c := range []byte("/\\%?#;") {
				if strings.Count(nf, string(c)) != strings.Count(dec, string(c)) {
					return refuse(fmt.Sprintf("a Unicode compatibility character that NFKC turns into %q", c))
				}
			}
			return p.normalize(orig, escapeDecoded(nf), depth+1)
		}
	}
	// Pass 2: segments, in place: w is the end of the output, which never
	// overtakes the segment being read.
	w, trailing := 0, false
	for r := 0; r < len(buf); {
		start := r + 1
		end := start
		for end < len(buf) && buf[end] != '/' {
			end++
		}
		seg := buf[start:end]
		last := end == len(buf)
		switch string(seg) { // no allocation: compared, not kept
		case "", ".":
			trailing = last
		case "..":
			w = max(0, lastSlash(buf[:w]))
			trailing = last
		default:
			if isDotWithParams(seg) {
				return refuse(fmt.Sprintf("dot segment with parameters %q", seg))
			}
			buf[w] = '/'
			w += 1 + copy(buf[w+1:], seg)
			trailing = false
		}
		r = end
	}
	if w == 0 {
		return "/", nil
	}
	if trailing {
		buf[w] = '/'
		w++
	}
	return string(buf[:w]), nil
}

func lastSlash(b []byte) int {
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == '/' {
			return i
		}
	}
	return -1
}

// isDotWithParams reports whether seg is "." or ".." followed by a path
// parameter (";" or %3B), which Java servers read as the dot segment.
func isDotWithParams(seg []byte) bool {
	s := string(seg)
	for _, dots := range []string{"..", "."} {
		if rest, ok := strings.CutPrefix(s, dots); ok && (strings.HasPrefix(rest, ";") || strings.HasPrefix(rest, "%3B")) {
			return true
		}
	}
	return false
}

// nfkcReason names the first character of dec that NFKC changes.
func nfkcReason(dec string) string {
	for _, r := range dec {
		if r < utf8.RuneSelf {
			continue
		}
		if s := string(r); norm.NFKC.String(s) != s {
			return fmt.Sprintf("Unicode character %U %q, which NFKC turns into %q", r, r, norm.NFKC.String(s))
		}
	}
	return "a character sequence that Unicode NFKC composes"
}

// unescapeValid decodes a path whose escapes are all valid.
func unescapeValid(b []byte) string {
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		if b[i] == '%' {
			out = append(out, unhex(b[i+1])<<4|unhex(b[i+2]))
			i += 2
			continue
		}
		out = append(out, b[i])
	}
	return string(out)
}

// escapeDecoded escapes a decoded path for another pass: every byte that
// is not "/" or a path character is percent-encoded, "%" included.
func escapeDecoded(s string) string {
	var out []byte
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '/' || isPathChar(c) {
			out = append(out, c)
		} else {
			out = appendEscape(out, c)
		}
	}
	return string(out)
}

// errPathPattern is wrapped by pattern validation errors.
var errPathPattern = errors.New("want \"/exact/path\", \"/subtree/\", \"/subtree/{$}\" (that path only), \"/with/*/globs\" (one segment each) or \"/prefix/**\", in normalized form (see PathPolicy.Normalize)")

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// isPathChar reports whether c may appear raw in a path segment (RFC 3986
// pchar without pct-encoded).
func isPathChar(c byte) bool {
	if isUnreserved(c) {
		return true
	}
	return strings.IndexByte("!$&'()*+,;=:@", c) >= 0
}

func appendEscape(b []byte, c byte) []byte {
	const hex = "0123456789ABCDEF"
	return append(b, '%', hex[c>>4], hex[c&15])
}
