package security

import (
	"errors"
	"fmt"
	"strings"
)

// PathError says why a request path was refused by NormalizePath. The mesh's
// HTTP server answers it with 400 Bad Request and the reason.
type PathError struct {
	Path   string // the path as received
	Reason string // what made it ambiguous, e.g. "encoded slash (%2F)"
}

func (e *PathError) Error() string {
	return fmt.Sprintf("security: request path %q refused: %s", e.Path, e.Reason)
}

// NormalizePath returns the canonical form of an HTTP request path as it
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
//   - a trailing slash is kept.
//
// It refuses with a *PathError what cannot be made unambiguous, because
// servers behind the check disagree on what it means: an encoded slash
// (%2F) or backslash (%5C), a raw backslash, NUL or any control character
// (raw or encoded), a fragment ("#"), a query ("?": pass the path only),
// an invalid percent-escape, a path not starting with "/", and a dot
// segment with path parameters ("..;", ".;x"), which Java servers read as
// ".." or ".". Otherwise ";" is an ordinary character, as in net/http.
//
// NormalizePath(NormalizePath(p)) == NormalizePath(p). It is safe for
// concurrent use.
func NormalizePath(raw string) (string, error) {
	refuse := func(reason string) (string, error) {
		return "", &PathError{Path: raw, Reason: reason}
	}
	if raw == "" || raw[0] != '/' {
		return refuse("it must start with \"/\"")
	}
	// Pass 1: canonical escaping, byte by byte.
	var b strings.Builder
	b.Grow(len(raw))
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
			case isUnreserved(v):
				b.WriteByte(v)
			default:
				writeEscape(&b, v)
			}
		case c == '#':
			return refuse("fragment (\"#\") in the request target")
		case c == '?':
			return refuse("query (\"?\") in the path")
		case c == '\\':
			return refuse("backslash in the path")
		case c < 0x20 || c == 0x7f:
			return refuse(fmt.Sprintf("control character 0x%02X", c))
		case c == '/' || isPathChar(c):
			b.WriteByte(c)
		default:
			writeEscape(&b, c)
		}
	}
	// Pass 2: segments. The first element of the split is the empty string
	// before the leading slash.
	segs := strings.Split(b.String(), "/")[1:]
	out := make([]string, 0, len(segs))
	trailing := false
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case "":
			trailing = last
			continue
		case ".":
			trailing = last
			continue
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			trailing = last
			continue
		}
		if before, _, ok := strings.Cut(s, ";"); ok && (before == "." || before == "..") {
			return refuse(fmt.Sprintf("dot segment with parameters %q", s))
		}
		out = append(out, s)
		trailing = false
	}
	if len(out) == 0 {
		return "/", nil
	}
	p := "/" + strings.Join(out, "/")
	if trailing {
		p += "/"
	}
	return p, nil
}

// NormalizeHost returns host (with its port, if any) in the form HTTP
// authorization rules compare: lower-case, without a trailing dot on the
// name.
func NormalizeHost(host string) string {
	host = strings.ToLower(host)
	name, port := host, ""
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.Contains(host[i:], "]") {
		name, port = host[:i], host[i:]
	}
	return strings.TrimSuffix(name, ".") + port
}

// errPathPattern is wrapped by pattern validation errors.
var errPathPattern = errors.New("want \"/exact/path\", \"/with/*/globs\" (one segment each) or \"/prefix/**\", in normalized form (see NormalizePath)")

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

func writeEscape(b *strings.Builder, c byte) {
	const hex = "0123456789ABCDEF"
	b.WriteByte('%')
	b.WriteByte(hex[c>>4])
	b.WriteByte(hex[c&15])
}
