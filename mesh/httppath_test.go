package mesh_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

// rawReq is one request written byte for byte, so that no client
// normalizes its target, Host or headers.
type rawReq struct {
	method, target, host string      // host "" sends no Host (HTTP/1.1) or :authority (HTTP/2)
	header               [][2]string // more header fields, as given
}

// rawResp is what came back: the status (streamReset when HTTP/2 reset
// the stream or connection instead), the body, and what httpEcho saw.
type rawResp struct {
	status int
	body   string
	echo   echoed
}

func (r *rawResp) decode(t *testing.T) {
	t.Helper()
	if r.status == http.StatusOK && r.body != "" {
		if err := json.Unmarshal([]byte(r.body), &r.echo); err != nil {
			t.Fatalf("decoding %q: %v", r.body, err)
		}
	}
}

// dialRaw opens a TLS connection to addr that negotiated proto (ALPN),
// closed when the test ends, with a 10s deadline.
func dialRaw(t *testing.T, addr string, cfg *tls.Config, proto string) *tls.Conn {
	t.Helper()
	c := cfg.Clone()
	c.NextProtos = []string{proto}
	conn, err := (&tls.Dialer{Config: c}).DialContext(callTimeout(t), "tcp", addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	tc := conn.(*tls.Conn)
	if p := tc.ConnectionState().NegotiatedProtocol; p != proto {
		t.Fatalf("negotiated %q, want %q", p, proto)
	}
	return tc
}

// sendRawH1 writes req as an HTTP/1.1 request line and header on a TLS
// connection made with cfg.
func sendRawH1(t *testing.T, addr string, cfg *tls.Config, req rawReq) rawResp {
	t.Helper()
	conn := dialRaw(t, addr, cfg, "http/1.1")
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\n", req.method, req.target)
	if req.host != "" {
		fmt.Fprintf(&b, "Host: %s\r\n", req.host)
	}
	for _, h := range req.header {
		fmt.Fprintf(&b, "%s: %s\r\n", h[0], h[1])
	}
	b.WriteString("Connection: close\r\n\r\n")
	if _, err := conn.Write(b.Bytes()); err != nil {
		t.Fatalf("writing request: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: req.method})
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	out := rawResp{status: resp.StatusCode, body: string(body)}
	out.decode(t)
	return out
}

// sendRawH2 writes req as one HTTP/2 HEADERS frame with the pseudo-headers
// as given (CONNECT: :authority is the target, no :scheme or :path), on a
// TLS connection made with cfg.
func sendRawH2(t *testing.T, addr string, cfg *tls.Config, req rawReq) rawResp {
	t.Helper()
	conn := dialRaw(t, addr, cfg, "h2")
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	fields := [][2]string{{":method", req.method}}
	if req.method == http.MethodConnect {
		fields = append(fields, [2]string{":authority", req.target})
	} else {
		fields = append(fields, [2]string{":scheme", "https"}, [2]string{":path", req.target})
		if req.host != "" {
			fields = append(fields, [2]string{":authority", req.host})
		}
	}
	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	for _, f := range append(fields, req.header...) {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hbuf.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	out := rawResp{}
	var body bytes.Buffer
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			if out.status == 0 {
				return rawResp{status: streamReset}
			}
			t.Fatalf("reading frames: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID == 1 {
				out.status, _ = strconv.Atoi(f.PseudoValue("status"))
				if f.StreamEnded() {
					return out
				}
			}
		case *http2.DataFrame:
			if f.StreamID == 1 {
				body.Write(f.Data())
				if f.StreamEnded() {
					out.body = body.String()
					out.decode(t)
					return out
				}
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == 1 {
				return rawResp{status: streamReset}
			}
		case *http2.GoAwayFrame:
			if out.status == 0 {
				return rawResp{status: streamReset}
			}
		}
	}
}

// clientTLS returns a client TLS config that presents src's SVID and
// does not check the server, for requests written byte for byte.
func clientTLS(t *testing.T, src *security.DevSource) *tls.Config {
	t.Helper()
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{{
		Certificate: [][]byte{svid.Certificates[0].Raw}, PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}}}
}

// refusedBy says who may refuse a request and how.
type refusedBy int

const (
	served     refusedBy = iota // 200: the handler sees the path the authorizer saw
	mesh400                     // the mesh's 400, body "gridmesh: ..." with the reason
	mesh403                     // the mesh's 403, body "gridmesh: ..." with the reason
	anyRefusal                  // net/http or the HTTP/2 framing may refuse first (400, reset) or the mesh (400, 403)
)

// pathCase is one request of TestHTTPServedPathIsAuthorizedPath.
type pathCase struct {
	class  string
	policy security.PathPolicy
	req    rawReq
	want   refusedBy
	reason string // served: the path the handler must see; mesh400/403: a part of the body
	h2     *pathCase
}

// TestHTTPServedPathIsAuthorizedPath sends each case over HTTP/1.1 and
// HTTP/2, byte for byte, to a mesh HTTP server that allows the subtree
// /public/ and refuses host admin.example.org (default deny for the rest),
// one server per path policy. Each request is either refused before the
// handler, with the expected status, or served, and then the handler saw
// exactly the path and host the authorizer decided on.
func TestHTTPServedPathIsAuthorizedPath(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	authz, err := security.HTTPRules(
		security.Refuse("no-admin-host", spiffeid.MatchAny(), "admin.example.org/"),
		security.Allow("public", spiffeid.MatchAny(), "/public/"),
	)
	if err != nil {
		t.Fatal(err)
	}
	type decision struct{ Path, Host string }
	var mu sync.Mutex
	var checked []decision
	spy := func(ctx context.Context, c security.Call) error {
		mu.Lock()
		checked = append(checked, decision{c.Path, c.Host})
		mu.Unlock()
		return authz(ctx, c)
	}
	h := &httpEcho{}
	const (
		strict  = security.PathStrict
		params  = security.PathAllowParameters
		delims  = security.PathAllowEncodedDelimiters
		unicode = security.PathNormalizeUnicode
	)
	addrs := map[security.PathPolicy]string{}
	for _, p := range []security.PathPolicy{strict, params, delims, unicode, params | delims | unicode} {
		opts := []mesh.ServerOption{mesh.WithIdentity(devSource(t, ca, "/server")), mesh.WithAuthorizer(spy)}
		if p != strict {
			opts = append(opts, mesh.WithHTTPPathPolicy(p))
		}
		addrs[p], _ = startHTTPServer(t, h, opts...)
	}
	cfg := clientTLS(t, devSource(t, ca, "/client"))

	get := func(target string) rawReq { return rawReq{method: "GET", target: target, host: "api"} }
	onHost := func(host, target string) rawReq { return rawReq{method: "GET", target: target, host: host} }
	tests := []pathCase{
		// Double encoding: one more decode would change the path.
		{class: "double encoding", req: get("/public/%252e%252e/admin"), want: mesh400, reason: `encoded '%' (%25)`},
		{class: "double encoding", req: get("/public/%252E%252E/admin"), want: mesh400, reason: `encoded '%' (%25)`},
		{class: "double encoding", req: get("/public%252F..%252Fadmin"), want: mesh400, reason: `encoded '%' (%25)`},
		{class: "double encoding", req: get("/public/%25%32%65%25%32%65/admin"), want: mesh400, reason: `encoded '%' (%25)`},
		{class: "double encoding", req: get("/public/%25252e%25252e/admin"), want: mesh400, reason: `encoded '%' (%25)`},
		{class: "double encoding", req: get("/public/%255C..%255Cadmin"), want: mesh400, reason: `encoded '%' (%25)`},
		{class: "double encoding", req: get("/public/x%3F/../../admin"), want: mesh400, reason: `encoded '?' (%3F)`},
		{class: "double encoding", req: get("/public/%23/../../admin"), want: mesh400, reason: `encoded '#' (%23)`},
		{class: "double encoding", policy: delims, req: get("/public/%252e%252e/admin"), want: served, reason: "/public/%252e%252e/admin"},
		{class: "double encoding", policy: delims, req: get("/public/100%25"), want: served, reason: "/public/100%25"},

		// Invalid UTF-8, overlong "." and "/" first, escaped and raw.
		{class: "invalid UTF-8", req: get("/public/%c0%ae%c0%ae/admin"), want: mesh400, reason: "invalid UTF-8"},
		{class: "invalid UTF-8", req: get("/public/%C0%AF..%C0%AFadmin"), want: mesh400, reason: "invalid UTF-8"},
		{class: "invalid UTF-8", req: get("/public/%e0%80%ae%e0%80%ae/admin"), want: mesh400, reason: "invalid UTF-8"},
		{class: "invalid UTF-8", req: get("/public/%f0%80%80%ae%f0%80%80%ae/admin"), want: mesh400, reason: "invalid UTF-8"},
		{class: "invalid UTF-8", req: get("/public/\xc0\xae\xc0\xae/admin"), want: mesh400, reason: "invalid UTF-8"},
		{class: "invalid UTF-8", req: get("/public/\xe0\x80\xaf"), want: mesh400, reason: "invalid UTF-8"},
		{class: "invalid UTF-8", req: get("/public/caf%e9"), want: mesh400, reason: "invalid UTF-8"},
		{class: "invalid UTF-8", req: get("/public/%ed%a0%80"), want: mesh400, reason: "invalid UTF-8"},
		{class: "invalid UTF-8", policy: unicode, req: get("/public/%c0%ae%c0%ae/admin"), want: mesh400, reason: "invalid UTF-8"},
		{class: "invalid UTF-8", req: get("/public/caf%C3%A9"), want: served, reason: "/public/caf%C3%A9"},

		// Unicode that NFKC changes: refused, or normalized on request;
		// refused either way when it becomes a separator.
		{class: "NFKC", req: get("/public/%EF%BC%8E%EF%BC%8E/admin"), want: mesh400, reason: "NFKC"},
		{class: "NFKC", req: get("/public/%E2%80%A5/admin"), want: mesh400, reason: "U+2025"},
		{class: "NFKC", req: get("/public/%E2%80%A4%E2%80%A4/admin"), want: mesh400, reason: "U+2024"},
		{class: "NFKC", req: get("/public/\uff0e\uff0e/admin"), want: mesh400, reason: "U+FF0E"},
		{class: "NFKC", req: get("/public/\uff41dmin"), want: mesh400, reason: "U+FF41"},
		{class: "NFKC", req: get("/public/cafe%CC%81"), want: mesh400, reason: "NFKC"},
		{class: "NFKC", req: get("/public%EF%BC%8F..%EF%BC%8Fadmin"), want: mesh400, reason: "NFKC"},
		{class: "NFKC", policy: unicode, req: get("/public%EF%BC%8F..%EF%BC%8Fadmin"), want: mesh400, reason: `NFKC turns into '/'`},
		{class: "NFKC", policy: unicode, req: get("/public/\uff3c..\uff3cadmin"), want: mesh400, reason: `NFKC turns into '\\'`},
		{class: "NFKC", policy: unicode, req: get("/public/%E2%80%A5/admin"), want: mesh403, reason: "GET /admin (decided by default deny)"},
		{class: "NFKC", policy: unicode, req: get("/public/%EF%BC%8E%EF%BC%8E/x"), want: mesh403, reason: "GET /x (decided by default deny)"},
		{class: "NFKC", policy: unicode, req: get("/public/\uff41dmin"), want: served, reason: "/public/admin"},
		{class: "NFKC", policy: unicode, req: get("/public/cafe%CC%81"), want: served, reason: "/public/caf%C3%A9"},

		// Path parameters: refused by default, literal on request, and
		// never on a dot segment.
		{class: "path parameters", req: get("/public;x/../admin"), want: mesh400, reason: "path parameter"},
		{class: "path parameters", req: get("/public/a;jsessionid=1"), want: mesh400, reason: "path parameter"},
		{class: "path parameters", req: get("/public/..;/admin"), want: mesh400, reason: "path parameter"},
		{class: "path parameters", req: get("/public/a%3Bb"), want: mesh400, reason: `encoded ";" (%3B)`},
		{class: "path parameters", policy: params, req: get("/public/a;v=1"), want: served, reason: "/public/a;v=1"},
		{class: "path parameters", policy: params, req: get("/public/..;/admin"), want: mesh400, reason: "dot segment with parameters"},
		{class: "path parameters", policy: params, req: get("/public/%2e%2e;x/admin"), want: mesh400, reason: "dot segment with parameters"},
		{class: "path parameters", policy: params, req: get("/public;x/a"), want: mesh403, reason: "default deny"},

		// NUL and non-UTF-8 in the path and in the Host rules read.
		{class: "NUL and non-UTF-8", req: get("/public/a%00"), want: mesh400, reason: "control character %00"},
		{class: "NUL and non-UTF-8", req: get("/public/a%00/../b"), want: mesh400, reason: "control character %00"},
		{class: "NUL and non-UTF-8", req: get("/public/a\x00"), want: anyRefusal},
		{class: "NUL and non-UTF-8", req: onHost("admin.example.org\x00.api", "/public/x"), want: anyRefusal},
		{class: "NUL and non-UTF-8", req: onHost("caf\xc3\xa9.example.org", "/public/x"), want: anyRefusal,
			h2: &pathCase{want: mesh400, reason: "Host: byte 0xC3 in the host name"}},
		{class: "NUL and non-UTF-8", req: onHost("admin\xc0\xae.example.org", "/public/x"), want: anyRefusal,
			h2: &pathCase{want: mesh400, reason: "Host: byte 0xC0 in the host name"}},
		{class: "NUL and non-UTF-8", req: onHost("\uff41dmin.example.org", "/public/x"), want: anyRefusal,
			h2: &pathCase{want: mesh400, reason: "Host: byte"}},
		{class: "NUL and non-UTF-8", req: onHost("admin.example.org\t", "/public/x"), want: anyRefusal},
		{class: "NUL and non-UTF-8", req: onHost("admin.example.org ", "/public/x"), want: anyRefusal},
		{class: "NUL and non-UTF-8", req: onHost("admin.example.org:", "/public/x"), want: mesh400, reason: "port must be 1 to 5 digits"},
		{class: "NUL and non-UTF-8", req: onHost("admin.example.org%00", "/public/x"), want: mesh400, reason: "Host: byte '%'"},
		{class: "NUL and non-UTF-8", req: get("http://admin%C0%AE.example.org/public/x"), want: mesh400, reason: "Host: byte 0xC0 in the host name",
			h2: &pathCase{want: mesh400, reason: "authority and the Host name different hosts"}},
		{class: "NUL and non-UTF-8", req: onHost("ADMIN.Example.ORG.", "/public/x"), want: mesh403, reason: "rule no-admin-host"},

		// Requests net/http would answer itself or route by another host.
		{class: "net/http-answered", req: rawReq{method: "OPTIONS", target: "*", host: "api"}, want: mesh400, reason: "asterisk-form"},
		{class: "net/http-answered", policy: params | delims | unicode, req: rawReq{method: "OPTIONS", target: "*", host: "api"}, want: mesh400, reason: "asterisk-form"},
		{class: "net/http-answered", req: rawReq{method: "CONNECT", target: "api:443", host: "api:443"}, want: mesh400, reason: "authority-form"},
		{class: "net/http-answered", req: get("http://admin.example.org/public/x"), want: mesh403, reason: "rule no-admin-host",
			h2: &pathCase{want: mesh400, reason: "authority and the Host name different hosts"}},
		{class: "net/http-answered", req: onHost("admin.example.org", "https://api/public/x"), want: served, reason: "/public/x",
			h2: &pathCase{want: mesh400, reason: "authority and the Host name different hosts"}},
		{class: "net/http-answered", req: rawReq{method: "GET", target: "/public/x", host: "api", header: [][2]string{{"host", "admin.example.org"}}}, want: anyRefusal,
			h2: &pathCase{want: mesh400, reason: "Host header and :authority"}},
		{class: "net/http-answered", req: rawReq{method: "TRACE", target: "/admin", host: "api"}, want: mesh403, reason: "TRACE /admin (decided by default deny)"},
		{class: "net/http-answered", req: rawReq{method: "OPTIONS", target: "/public/x", host: "api"}, want: served, reason: "/public/x"},

		// Pattern semantics: "/public/" is the subtree, not /public.
		{class: "pattern semantics", req: get("/public"), want: mesh403, reason: "default deny"},
		{class: "pattern semantics", req: get("/public/"), want: served, reason: "/public/"},
		{class: "pattern semantics", req: get("/public/a/b/"), want: served, reason: "/public/a/b/"},
		{class: "pattern semantics", req: get("/publicX/a"), want: mesh403, reason: "default deny"},
		{class: "pattern semantics", req: get("//public//a/./b/../c"), want: served, reason: "/public/a/c"},
		{class: "pattern semantics", req: get("/public/../admin"), want: mesh403, reason: "GET /admin (decided by default deny)"},
		{class: "pattern semantics", req: get("/x/../public/a"), want: served, reason: "/public/a"},
		{class: "pattern semantics", req: get("/public/%2e%2e"), want: mesh403, reason: "GET / (decided by default deny)"},
	}
	counts := map[string]int{}
	for _, proto := range []string{"HTTP/1.1", "HTTP/2"} {
		for i, tc := range tests {
			counts[tc.class]++
			name := fmt.Sprintf("%s/%s/%d %s %q %v", proto, tc.class, i, tc.req.method, tc.req.target, tc.policy)
			t.Run(name, func(t *testing.T) {
				want := tc
				if proto == "HTTP/2" && tc.h2 != nil {
					want.want, want.reason = tc.h2.want, tc.h2.reason
				}
				mu.Lock()
				checked = nil
				mu.Unlock()
				before := h.calls.Load()
				var got rawResp
				if proto == "HTTP/2" {
					got = sendRawH2(t, addrs[tc.policy], cfg, tc.req)
				} else {
					got = sendRawH1(t, addrs[tc.policy], cfg, tc.req)
				}
				ran := h.calls.Load() != before
				mu.Lock()
				decisions := checked
				mu.Unlock()
				switch want.want {
				case served:
					if got.status != http.StatusOK || !ran {
						t.Fatalf("status %d %q, handler ran=%v; want 200 from the handler", got.status, got.body, ran)
					}
					if len(decisions) != 1 {
						t.Fatalf("authorizer decided %d times, want once", len(decisions))
					}
					if diff := cmp.Diff(decision{want.reason, decisions[0].Host}, decision{got.echo.Path, got.echo.Host}); diff != "" {
						t.Errorf("handler saw (-want +got):\n%s", diff)
					}
					if decisions[0].Path != got.echo.Path {
						t.Errorf("authorizer decided on %q, handler saw %q", decisions[0].Path, got.echo.Path)
					}
					if !strings.HasPrefix(got.echo.RequestURI, got.echo.Path) {
						t.Errorf("RequestURI %q does not start with the authorized path %q", got.echo.RequestURI, got.echo.Path)
					}
				case mesh400, mesh403:
					status := map[refusedBy]int{mesh400: http.StatusBadRequest, mesh403: http.StatusForbidden}[want.want]
					if ran || got.status != status || !strings.HasPrefix(got.body, "gridmesh: ") || !strings.Contains(got.body, want.reason) {
						t.Fatalf("status %d %q, handler ran=%v; want the mesh's %d containing %q", got.status, got.body, ran, status, want.reason)
					}
					if want.want == mesh400 && len(decisions) != 0 {
						t.Errorf("the authorizer was asked about %v, want a refusal before it", decisions)
					}
				case anyRefusal:
					if ran || got.status != http.StatusBadRequest && got.status != http.StatusForbidden && got.status != streamReset {
						t.Fatalf("status %d %q, handler ran=%v; want a refusal before the handler", got.status, got.body, ran)
					}
				}
			})
		}
	}
	t.Logf("%d cases, each over HTTP/1.1 and HTTP/2; per class (both protocols): %v", len(tests), counts)
}

func TestWithHTTPPathPolicyErrors(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	src := devSource(t, ca, "/server")
	if _, err := mesh.NewServer(mesh.WithIdentity(src), mesh.WithHTTPPathPolicy(security.PathAllowParameters)); err == nil ||
		!strings.Contains(err.Error(), "WithHTTPPathPolicy does not apply to NewServer: it configures NewHTTPServer only") {
		t.Errorf("NewServer with WithHTTPPathPolicy: %v, want an error naming the option", err)
	}
	if _, err := mesh.NewHTTPServer(&httpEcho{}, mesh.WithIdentity(src), mesh.WithHTTPPathPolicy(security.PathPolicy(0x80))); err == nil ||
		!strings.Contains(err.Error(), "unknown flags 0x80") {
		t.Errorf("NewHTTPServer with an unknown path policy flag: %v, want an error naming it", err)
	}
}
