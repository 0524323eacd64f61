package mesh_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/gridmesh/gridmesh/internal/testutil/pki"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

// httpEcho answers every request with what the handler saw, as JSON, and
// counts its runs.
type httpEcho struct {
	name  string
	calls atomic.Int64
	block chan struct{}
}

type echoed struct {
	Backend    string `json:"backend"`
	Caller     string `json:"caller"`
	Path       string `json:"path"`        // r.URL.EscapedPath()
	DecodedURL string `json:"decoded"`     // r.URL.Path
	RequestURI string `json:"request_uri"` // r.RequestURI
	Host       string `json:"host"`
	Proto      string `json:"proto"`
	Trace      string `json:"traceparent"`
}

func (h *httpEcho) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.calls.Add(1)
	if h.block != nil {
		<-h.block
	}
	caller, _ := mesh.PeerID(r.Context())
	json.NewEncoder(w).Encode(echoed{
		Backend: h.name, Caller: caller.String(), Path: r.URL.EscapedPath(), DecodedURL: r.URL.Path,
		RequestURI: r.RequestURI, Host: r.Host, Proto: r.Proto, Trace: r.Header.Get("traceparent"),
	})
}

// startHTTPServer runs a mesh HTTP server on loopback until the test ends
// or stop is called; stop closes it abruptly, as a killed process would.
func startHTTPServer(t *testing.T, h http.Handler, opts ...mesh.ServerOption) (addr string, stop func()) {
	t.Helper()
	srv, err := mesh.NewHTTPServer(h, opts...)
	if err != nil {
		t.Fatalf("NewHTTPServer: %v", err)
	}
	lis := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	var stopped atomic.Bool
	stop = func() {
		if stopped.Swap(true) {
			return
		}
		srv.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}
	t.Cleanup(stop)
	return lis.Addr().String(), stop
}

func httpClient(t *testing.T, opts ...mesh.DialOption) *http.Client {
	t.Helper()
	c, err := mesh.HTTPClient(opts...)
	if err != nil {
		t.Fatalf("HTTPClient: %v", err)
	}
	t.Cleanup(func() { c.Transport.(*mesh.HTTPTransport).Close() })
	return c
}

func get(t *testing.T, c *http.Client, url string) (*http.Response, echoed) {
	t.Helper()
	req, err := http.NewRequestWithContext(callTimeout(t), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	var e echoed
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
			t.Fatalf("decoding: %v", err)
		}
	}
	return resp, e
}

func TestHTTPCallsCarryBothIdentities(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	h := &httpEcho{}
	addr, _ := startHTTPServer(t, h, mesh.WithIdentity(devSource(t, ca, "/server")))
	onlyHTTP1 := func() http.Protocols { var p http.Protocols; p.SetHTTP1(true); return p }()
	onlyHTTP2 := func() http.Protocols { var p http.Protocols; p.SetHTTP2(true); return p }()
	tests := []struct {
		name      string
		opts      []mesh.DialOption
		wantProto string
	}{
		{"default prefers HTTP/2", nil, "HTTP/2.0"},
		{"HTTP/1.1", []mesh.DialOption{mesh.WithHTTPProtocols(onlyHTTP1)}, "HTTP/1.1"},
		{"HTTP/2 only", []mesh.DialOption{mesh.WithHTTPProtocols(onlyHTTP2)}, "HTTP/2.0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := httpClient(t, append(tc.opts, mesh.WithIdentity(devSource(t, ca, "/client")))...)
			resp, e := get(t, c, "http://"+addr+"/v1/hello")
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
			serverID, ok := mesh.ServerID(resp)
			got := echoed{Caller: e.Caller, Proto: e.Proto, Path: resp.Proto + " " + serverID.String()}
			want := echoed{Caller: "spiffe://example.org/client", Proto: tc.wantProto, Path: tc.wantProto + " spiffe://example.org/server"}
			if diff := cmp.Diff(want, got); diff != "" || !ok {
				t.Errorf("identities and protocol (-want +got):\n%s", diff)
			}
			if resp.TLS.Version != tls.VersionTLS13 {
				t.Errorf("TLS version %x, want 1.3", resp.TLS.Version)
			}
		})
	}
	t.Run("HTTP/1.1-only server", func(t *testing.T) {
		addr1, _ := startHTTPServer(t, h, mesh.WithIdentity(devSource(t, ca, "/server")), mesh.WithHTTPProtocols(onlyHTTP1))
		c := httpClient(t, mesh.WithIdentity(devSource(t, ca, "/client")))
		resp, e := get(t, c, "http://"+addr1+"/")
		if resp.StatusCode != http.StatusOK || e.Proto != "HTTP/1.1" || e.Caller != "spiffe://example.org/client" {
			t.Errorf("status %d, proto %q, caller %q", resp.StatusCode, e.Proto, e.Caller)
		}
	})
}

// TestHTTPBadClientCertificatesRefusedBeforeHandler is the core's bad-input
// table over HTTP: every case fails and no handler runs.
func TestHTTPBadClientCertificatesRefusedBeforeHandler(t *testing.T) {
	ca := pki.NewCA(t, "example.org")
	otherDomain := pki.NewCA(t, "evil.org")
	rogue := pki.NewCA(t, "example.org") // same name, different key: not in the bundle
	authz, err := security.HTTPRules(security.Allow("clients", security.PathPrefix(id("/clients")), "*"))
	if err != nil {
		t.Fatal(err)
	}
	h := &httpEcho{}
	addr, _ := startHTTPServer(t, h,
		mesh.WithIdentity(ca.NewSource(t, "spiffe://example.org/server")),
		mesh.WithAuthorizer(authz))

	now := time.Now()
	withCert := func(c tls.Certificate) *tls.Config {
		return &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{c}}
	}
	tests := []struct {
		name       string
		tls        *tls.Config // nil: plaintext
		wantStatus int         // 0: the request must fail
		wantMsg    string
	}{
		{"no client certificate", &tls.Config{InsecureSkipVerify: true}, 0, ""},
		{"wrong trust domain", withCert(otherDomain.Issue(t, pki.Leaf{URIs: []string{"spiffe://evil.org/clients/a"}})), 0, ""},
		{"expired", withCert(ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/clients/a"}, NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Minute)})), 0, ""},
		{"not yet valid", withCert(ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/clients/a"}, NotBefore: now.Add(time.Hour), NotAfter: now.Add(2 * time.Hour)})), 0, ""},
		{"self-signed", withCert(ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/clients/a"}, SelfSigned: true})), 0, ""},
		{"signed by a CA not in the bundle", withCert(rogue.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/clients/a"}})), 0, ""},
		{"two URI SANs", withCert(ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/clients/a", "spiffe://example.org/clients/b"}})), 0, ""},
		{"no URI SAN", withCert(ca.Issue(t, pki.Leaf{})), 0, ""},
		{"CA certificate as leaf", withCert(ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/clients/a"}, IsCA: true})), 0, ""},
		{"malformed SPIFFE ID", withCert(ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/clients//a"}})), 0, ""},
		{"URI SAN that is not SPIFFE", withCert(ca.Issue(t, pki.Leaf{URIs: []string{"https://example.org/clients/a"}})), 0, ""},
		{"TLS 1.2 client", &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12, Certificates: []tls.Certificate{ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/clients/a"}})}}, 0, ""},
		// net/http answers a plaintext request on a TLS port with a plain 400.
		{"plaintext client", nil, http.StatusBadRequest, ""},
		{"valid SVID that no rule allows", withCert(ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/intruder"}})), http.StatusForbidden,
			"spiffe://example.org/intruder may not call GET /v1/holdings (decided by default deny)"},
	}
	for _, c := range badSANCerts("spiffe://example.org/clients/a") { // mesh/badsan_test.go
		tc := tests[0] // the same expectation: a failed handshake
		tc.name, tc.tls = "SAN: "+c.name, withCert(ca.IssueSANs(t, c.sans...))
		tests = append(tests, tc)
	}
	for _, tc := range tests {
		for _, h2 := range []bool{false, true} {
			if tc.tls == nil && h2 {
				continue
			}
			name := tc.name + map[bool]string{false: " HTTP/1.1", true: " HTTP/2"}[h2]
			t.Run(name, func(t *testing.T) {
				tr := &http.Transport{TLSClientConfig: tc.tls, ForceAttemptHTTP2: h2, DisableKeepAlives: true}
				if tc.tls != nil {
					tr.TLSClientConfig = tc.tls.Clone()
				}
				defer tr.CloseIdleConnections()
				scheme := "https"
				if tc.tls == nil {
					scheme = "http"
				}
				req, _ := http.NewRequestWithContext(callTimeout(t), http.MethodGet, scheme+"://"+addr+"/v1/holdings", nil)
				resp, err := (&http.Client{Transport: tr}).Do(req)
				if tc.wantStatus == 0 {
					if err == nil {
						resp.Body.Close()
						t.Fatalf("request succeeded with status %d, want a failed handshake", resp.StatusCode)
					}
					return
				}
				if err != nil {
					t.Fatalf("request failed: %v, want status %d", err, tc.wantStatus)
				}
				defer resp.Body.Close()
				body, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != tc.wantStatus || !strings.Contains(string(body), tc.wantMsg) {
					t.Errorf("got %d %q, want %d containing %q", resp.StatusCode, body, tc.wantStatus, tc.wantMsg)
				}
			})
		}
	}
	if n := h.calls.Load(); n != 0 {
		t.Errorf("handler ran %d times, want 0", n)
	}
	// The same server still serves a good client.
	tr := &http.Transport{TLSClientConfig: withCert(ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/clients/a"}}))}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(callTimeout(t), http.MethodGet, "https://"+addr+"/v1/holdings", nil)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("good client refused: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("good client got %d", resp.StatusCode)
	}
}

func TestHTTPAuthorizationRules(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	authz, err := security.HTTPRules(
		security.Allow("gateway-reads", spiffeid.MatchID(id("/gateway")), "GET /v1/trades/*", "GET /v1/lots"),
		security.Allow("settlement", spiffeid.MatchID(id("/settlement")), "POST /v1/orders/**"),
		security.Allow("ops", security.PathPrefix(id("/ops")), "*"),
		security.Refuse("no-admin-for-interns", spiffeid.MatchID(id("/ops/intern")), "/admin/**"),
	)
	if err != nil {
		t.Fatal(err)
	}
	h := &httpEcho{}
	addr, _ := startHTTPServer(t, h, mesh.WithIdentity(devSource(t, ca, "/server")), mesh.WithAuthorizer(authz))
	tests := []struct {
		caller, method, path string
		want                 int
		wantRule             string
	}{
		{"/gateway", "GET", "/v1/trades/42", 200, ""},
		{"/gateway", "HEAD", "/v1/lots", 200, ""},
		{"/gateway", "POST", "/v1/trades/42", 403, "default deny"},
		{"/gateway", "GET", "/v1/trades/42/fills", 403, "default deny"},
		{"/gateway", "GET", "/v1/trades//42", 200, ""}, // normalized to /v1/trades/42
		{"/settlement", "POST", "/v1/orders", 200, ""},
		{"/settlement", "POST", "/v1/orders/7/cancel", 200, ""},
		{"/settlement", "DELETE", "/v1/orders/7", 403, "default deny"},
		{"/ops/alice", "DELETE", "/admin/users/1", 200, ""},
		{"/ops/intern", "GET", "/admin", 403, "rule no-admin-for-interns"},
		{"/ops/intern", "GET", "/v1/../admin/x", 403, "rule no-admin-for-interns"},
		{"/ops/intern", "GET", "/v1/lots", 200, ""},
		{"/stranger", "GET", "/v1/lots", 403, "default deny"},
	}
	for _, tc := range tests {
		t.Run(tc.caller+" "+tc.method+" "+tc.path, func(t *testing.T) {
			c := httpClient(t, mesh.WithIdentity(devSource(t, ca, tc.caller)))
			before := h.calls.Load()
			req, _ := http.NewRequestWithContext(callTimeout(t), tc.method, "http://"+addr+tc.path, nil)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tc.want)
			}
			if tc.want == 403 {
				if h.calls.Load() != before {
					t.Error("handler ran for a denied request")
				}
				if want := "(decided by " + tc.wantRule + ")"; !strings.Contains(string(body), want) {
					t.Errorf("body %q does not contain %q", body, want)
				}
			}
		})
	}
}

// rawRequest sends one HTTP/1.1 request with a request target and Host
// exactly as given, bypassing net/url's encoding (see sendRawH1).
func rawRequest(t *testing.T, addr string, cfg *tls.Config, method, target, host string) (int, echoed) {
	t.Helper()
	r := sendRawH1(t, addr, cfg, rawReq{method: method, target: target, host: host})
	return r.status, r.echo
}

// streamReset stands for an HTTP/2 stream or connection reset where
// rawH2Request expected a response.
const streamReset = -1

// rawH2Request sends one HTTP/2 request with :path and :authority exactly
// as given, writing the frames itself so that no client-side validation
// changes them (see sendRawH2).
func rawH2Request(t *testing.T, addr string, cfg *tls.Config, method, path, authority string) (int, echoed) {
	t.Helper()
	r := sendRawH2(t, addr, cfg, rawReq{method: method, target: path, host: authority})
	return r.status, r.echo
}

// TestHTTPPathNormalizationTable sends known authorization bypasses to a
// server that refuses /admin/** and anything on host admin.example.org:
// no denied path may reach the handler, and for every allowed request the
// handler sees exactly the path the policy checked.
func TestHTTPPathNormalizationTable(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	authz, err := security.HTTPRules(
		security.Refuse("no-admin", spiffeid.MatchAny(), "/admin/**", "admin.example.org/**"),
		security.Allow("rest", spiffeid.MatchAny(), "*"),
	)
	if err != nil {
		t.Fatal(err)
	}
	h := &httpEcho{}
	var checked atomic.Value // the path the last authorization decided on
	spy := func(ctx context.Context, c security.Call) error { checked.Store(c.Path); return authz(ctx, c) }
	addr, _ := startHTTPServer(t, h, mesh.WithIdentity(devSource(t, ca, "/server")), mesh.WithAuthorizer(spy))
	cfg := clientTLS(t, devSource(t, ca, "/client"))

	tests := []struct {
		target, host string
		want         string // the path the handler sees, or "" when refused
	}{
		{"/admin", "api", ""},
		{"/admin/users", "api", ""},
		{"//admin", "api", ""},
		{"///admin//users", "api", ""},
		{"/./admin", "api", ""},
		{"/public/../admin", "api", ""},
		{"/public/./../admin/", "api", ""},
		{"/../../admin", "api", ""},
		{"/%2e/admin", "api", ""},
		{"/%2e%2e/admin", "api", ""},
		{"/public/%2E%2E/admin", "api", ""},
		{"/public/.%2e/admin", "api", ""},
		{"/%61dmin", "api", ""},
		{"/%41dmin", "api", "/Admin"}, // paths are case-sensitive: /Admin is not /admin
		{"/ADMIN", "api", "/ADMIN"},
		{"/public%2F..%2Fadmin", "api", ""},
		{"/admin%2fusers", "api", ""},
		{"/public%5C..%5Cadmin", "api", ""},
		{"/public\\..\\admin", "api", ""},
		{"/public/..;/admin", "api", ""},
		{"/public/%2e%2e;/admin", "api", ""},
		{"/public/.;/admin", "api", ""},
		{"/admin%00", "api", ""},
		{"/public%00/../admin", "api", ""},
		{"/public#/../admin", "api", ""},
		{"/admin#", "api", ""},
		{"/admin%zz", "api", ""},
		{"/admin%", "api", ""},
		{"/admin?x=1", "api", ""},
		{"/admin/?next=/public", "api", ""},
		{"/public?/../admin", "api", "/public"},
		{"http://api/admin", "api", ""},
		{"http://api//public/../admin", "api", ""},
		// Refused by the default path policy (mesh/httppath_test.go
		// covers the policies): double encoding and path parameters.
		{"/public/%252e%252e/admin", "api", ""},
		{"/admin%252F", "api", ""},
		{"/admin;x=1", "api", ""},
		{"/public", "api", "/public"},
		{"//public//a/./b/../c/", "api", "/public/a/c/"},
		{"/public/%7euser", "api", "/public/~user"},
		{"/public/a%3ab", "api", "/public/a%3Ab"},
		{"/public", "admin.example.org", ""},
		{"/public", "ADMIN.example.org", ""},
		{"/public", "Admin.Example.Org", ""},
		{"/public", "admin.example.org.", ""},
		{"/public", "admin.example.org:443", ""},
		{"/public", "ADMIN.EXAMPLE.ORG.:8443", ""},
		{"/public", "api.example.org", "/public"},
		{"*", "api", ""},
	}
	for _, proto := range []string{"HTTP/1.1", "HTTP/2"} {
		for _, tc := range tests {
			t.Run(proto+" "+tc.host+" "+tc.target, func(t *testing.T) {
				checked.Store("")
				before := h.calls.Load()
				var status int
				var e echoed
				if proto == "HTTP/2" {
					status, e = rawH2Request(t, addr, cfg, http.MethodGet, tc.target, tc.host)
				} else {
					status, e = rawRequest(t, addr, cfg, http.MethodGet, tc.target, tc.host)
				}
				ran := h.calls.Load() != before
				if tc.want == "" {
					// 400 or 403 from the mesh, or a stream reset from the
					// HTTP/2 server for a malformed :path.
					if status != http.StatusBadRequest && status != http.StatusForbidden && status != streamReset || ran {
						t.Fatalf("status %d, handler ran=%v: want a refusal without the handler", status, ran)
					}
					return
				}
				if status != http.StatusOK {
					t.Fatalf("status %d, want 200", status)
				}
				if diff := cmp.Diff(tc.want, e.Path); diff != "" {
					t.Errorf("handler path (-want +got):\n%s", diff)
				}
				if got := checked.Load(); got != e.Path {
					t.Errorf("policy checked %q, handler saw %q", got, e.Path)
				}
				if !strings.HasPrefix(e.RequestURI, e.Path) {
					t.Errorf("RequestURI %q does not start with the checked path %q", e.RequestURI, e.Path)
				}
				if e.Proto != proto && !(proto == "HTTP/2" && e.Proto == "HTTP/2.0") {
					t.Errorf("served over %s, want %s", e.Proto, proto)
				}
			})
		}
	}
	t.Logf("end-to-end normalization table: %d cases, each over HTTP/1.1 and HTTP/2", len(tests))
}

// TestHTTPResumedSessionRechecksCertificate resumes a TLS session after the
// client certificate it was made with has expired: the server must refuse
// it, as it would a full handshake.
func TestHTTPResumedSessionRechecksCertificate(t *testing.T) {
	ca := pki.NewCA(t, "example.org")
	h := &httpEcho{}
	addr, _ := startHTTPServer(t, h, mesh.WithIdentity(ca.NewSource(t, "spiffe://example.org/server")))
	cert := ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/client"}, NotAfter: time.Now().Add(2 * time.Second)})
	cfg := &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}, ClientSessionCache: tls.NewLRUClientSessionCache(4)}

	request := func() (resumed bool, err error) {
		conn, err := (&tls.Dialer{Config: cfg}).DialContext(callTimeout(t), "tcp", addr)
		if err != nil {
			return false, err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return conn.(*tls.Conn).ConnectionState().DidResume, err
		}
		resp.Body.Close()
		return conn.(*tls.Conn).ConnectionState().DidResume, nil
	}
	if _, err := request(); err != nil {
		t.Fatalf("first request: %v", err)
	}
	if resumed, err := request(); err != nil || !resumed {
		t.Fatalf("second request: resumed=%v err=%v; want a resumed session", resumed, err)
	}
	calls := h.calls.Load()
	for time.Now().Before(cert.Leaf.NotAfter.Add(100 * time.Millisecond)) {
		time.Sleep(50 * time.Millisecond) // the certificate must expire; no state to poll
	}
	if _, err := request(); err == nil {
		t.Fatal("request on a session resumed with an expired certificate succeeded")
	}
	if h.calls.Load() != calls {
		t.Error("handler ran for the refused resumption")
	}
}
