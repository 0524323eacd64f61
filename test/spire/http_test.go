package spire_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/gridmesh/gridmesh/internal/testutil/spire"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

// httpEcho answers every request with the caller's SPIFFE ID and records the
// client certificates it was reached with.
type httpEcho struct {
	calls atomic.Int64

	mu          sync.Mutex
	clientCerts map[string]bool
}

func (h *httpEcho) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.calls.Add(1)
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		h.mu.Lock()
		if h.clientCerts == nil {
			h.clientCerts = map[string]bool{}
		}
		h.clientCerts[r.TLS.PeerCertificates[0].SerialNumber.String()] = true
		h.mu.Unlock()
	}
	caller, _ := mesh.PeerID(r.Context())
	io.WriteString(w, caller.String())
}

func (h *httpEcho) distinctClientCerts() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.clientCerts)
}

// startHTTPServer serves h with the mesh on a loopback port until the test
// ends and returns its base URL.
func startHTTPServer(t testing.TB, h http.Handler, opts ...mesh.ServerOption) string {
	t.Helper()
	srv, err := mesh.NewHTTPServer(h, opts...)
	if err != nil {
		t.Fatalf("mesh.NewHTTPServer: %v", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		srv.Close()
		if err := <-done; err != nil {
			t.Errorf("HTTPServer.Serve: %v", err)
		}
	})
	return "https://" + lis.Addr().String()
}

// httpClient returns the mesh's HTTP client, closed in t.Cleanup.
func httpClient(t testing.TB, opts ...mesh.DialOption) *http.Client {
	t.Helper()
	c, err := mesh.HTTPClient(opts...)
	if err != nil {
		t.Fatalf("mesh.HTTPClient: %v", err)
	}
	t.Cleanup(func() { c.Transport.(*mesh.HTTPTransport).Close() })
	return c
}

// httpDo sends one request and returns the status and body.
func httpDo(ctx context.Context, c *http.Client, method, url string) (int, string, *http.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return 0, "", nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(body)), resp, err
}

// httpCheck makes one GET and checks it reached the handler as caller. p,
// when not nil, receives the server's TLS state, as a gRPC call's would.
func httpCheck(ctx context.Context, c *http.Client, url string, caller spiffeid.ID, p *peer.Peer) error {
	code, body, resp, err := httpDo(ctx, c, http.MethodGet, url)
	if err != nil {
		return err
	}
	if p != nil && resp.TLS != nil {
		p.AuthInfo = credentials.TLSInfo{State: *resp.TLS}
	}
	if code != http.StatusOK || body != caller.String() {
		return fmt.Errorf("GET %s: %d %q, want 200 %q", url, code, body, caller)
	}
	return nil
}

func TestMeshHTTPAuthorizedBySPIREIdentities(t *testing.T) {
	t.Parallel()
	d := spire.Start(t, spire.Config{})
	registerAll(t, d, 0, "/trading", "/frontend", "/rogue")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	trading := workloadSource(ctx, t, d, d.Addr(), "/trading")
	frontend := workloadSource(ctx, t, d, d.Addr(), "/frontend")
	rogue := workloadSource(ctx, t, d, d.Addr(), "/rogue")

	authz, err := security.HTTPRules(security.Allow("frontend-trades", spiffeid.MatchID(d.ID("/frontend")), "GET /v1/trades"))
	if err != nil {
		t.Fatal(err)
	}
	h := &httpEcho{}
	base := startHTTPServer(t, h, mesh.WithIdentity(trading), mesh.WithAuthorizer(authz))
	trades := base + "/v1/trades"

	t.Run("allowed caller", func(t *testing.T) {
		c := httpClient(t, mesh.WithIdentity(frontend), mesh.WithServerID(d.ID("/trading")))
		code, body, resp, err := httpDo(ctx, c, http.MethodGet, trades)
		if err != nil || code != http.StatusOK || body != d.ID("/frontend").String() {
			t.Fatalf("frontend GET /v1/trades: %d %q %v; want 200 and the caller's ID", code, body, err)
		}
		if id, ok := mesh.ServerID(resp); !ok || id != d.ID("/trading") {
			t.Errorf("ServerID = %v, %v; want %s", id, ok, d.ID("/trading"))
		}
	})
	t.Run("allowed caller, method without a rule", func(t *testing.T) {
		before := h.calls.Load()
		c := httpClient(t, mesh.WithIdentity(frontend), mesh.WithServerID(d.ID("/trading")))
		code, body, _, err := httpDo(ctx, c, http.MethodPost, trades)
		if err != nil || code != http.StatusForbidden {
			t.Fatalf("frontend POST /v1/trades: %d %q %v; want 403", code, body, err)
		}
		t.Logf("frontend POST /v1/trades: %d %s", code, body)
		if n := h.calls.Load() - before; n != 0 {
			t.Errorf("a denied request reached the handler %d times", n)
		}
	})
	t.Run("caller without a rule", func(t *testing.T) {
		before := h.calls.Load()
		c := httpClient(t, mesh.WithIdentity(rogue), mesh.WithServerID(d.ID("/trading")))
		code, body, _, err := httpDo(ctx, c, http.MethodGet, trades)
		if err != nil || code != http.StatusForbidden {
			t.Fatalf("rogue GET /v1/trades: %d %q %v; want 403", code, body, err)
		}
		t.Logf("rogue GET /v1/trades: %d %s", code, body)
		if !strings.Contains(body, d.ID("/rogue").String()) {
			t.Errorf("denial %q does not name the caller %s", body, d.ID("/rogue"))
		}
		if n := h.calls.Load() - before; n != 0 {
			t.Errorf("a denied request reached the handler %d times", n)
		}
	})
	t.Run("server with another identity", func(t *testing.T) {
		before := h.calls.Load()
		c := httpClient(t, mesh.WithIdentity(frontend), mesh.WithServerID(d.ID("/payments")))
		code, _, _, err := httpDo(ctx, c, http.MethodGet, trades)
		if err == nil {
			t.Fatalf("a client expecting /payments got %d from a server presenting /trading", code)
		}
		t.Logf("frontend → /trading when expecting /payments: %v", err)
		if n := h.calls.Load() - before; n != 0 {
			t.Errorf("the request reached the handler %d times", n)
		}
	})
}

// TestMeshHTTPCallsAcrossRotations is TestMeshCallsAcrossRotations over the
// mesh's HTTP server and client.
func TestMeshHTTPCallsAcrossRotations(t *testing.T) {
	t.Parallel()
	const ttl = 20 * time.Second
	run := 2 * time.Minute
	if testing.Short() {
		run = 30 * time.Second
	}
	d := spire.Start(t, spire.Config{})
	registerAll(t, d, ttl, "/trading", "/frontend")
	ctx, cancel := context.WithTimeout(context.Background(), run+2*time.Minute)
	defer cancel()
	trading := workloadSource(ctx, t, d, d.Addr(), "/trading")
	frontend := workloadSource(ctx, t, d, d.Addr(), "/frontend")
	serverRot := watchRotations(t, "trading", trading)
	clientRot := watchRotations(t, "frontend", frontend)

	authz, err := security.HTTPRules(security.Allow("frontend", spiffeid.MatchID(d.ID("/frontend")), "GET /v1/trades"))
	if err != nil {
		t.Fatal(err)
	}
	h := &httpEcho{}
	url := startHTTPServer(t, h, mesh.WithIdentity(trading), mesh.WithAuthorizer(authz)) + "/v1/trades"
	c := httpClient(t, mesh.WithIdentity(frontend), mesh.WithServerID(d.ID("/trading")))
	caller := d.ID("/frontend")

	l := startLoad(t, loadWorkers, loadEvery, func(ctx context.Context, p *peer.Peer) error {
		return httpCheck(ctx, c, url, caller, p)
	})
	select {
	case <-time.After(run):
	case <-ctx.Done():
	}
	l.stop()
	l.report(t, "HTTP calls across rotations")
	t.Logf("in %v: server SVID rotated %d times, client SVID %d times; the server saw %d distinct client certificates",
		run, serverRot.count(), clientRot.count(), h.distinctClientCerts())
	min := int(run / ttl)
	if serverRot.count() < min || clientRot.count() < min {
		t.Errorf("rotations seen: server %d, client %d; want at least %d each", serverRot.count(), clientRot.count(), min)
	}
	if h.distinctClientCerts() < 2 {
		t.Errorf("the server saw %d client certificates: requests never moved to a rotated SVID", h.distinctClientCerts())
	}
}
