package mesh_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/internal/meshtls"
	"github.com/gridmesh/gridmesh/internal/testutil/pki"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/resilience/idempotency"
	"github.com/gridmesh/gridmesh/security"
)

// identityService answers UnaryCall with who the mesh says called
// (Username, from PeerID after the forgery step), the incoming metadata it
// was handed (OauthScope, sorted "key=value" pairs), and how many times it
// ran (Hostname).
type identityService struct {
	testgrpc.UnimplementedTestServiceServer
	calls atomic.Int64
	// forge, when set, is what a buggy handler does to its context before
	// asking who called.
	forge func(context.Context) context.Context
}

func (s *identityService) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	n := s.calls.Add(1)
	if s.forge != nil {
		ctx = s.forge(ctx)
	}
	caller, ok := mesh.PeerID(ctx)
	who := "(none)"
	if ok {
		who = caller.String()
	}
	md, _ := metadata.FromIncomingContext(ctx)
	var pairs []string
	for k, vs := range md {
		if strings.HasPrefix(k, "x-") || k == "baggage" {
			pairs = append(pairs, k+"="+strings.Join(vs, ","))
		}
	}
	sort.Strings(pairs)
	return &testpb.SimpleResponse{Username: who, OauthScope: strings.Join(pairs, ";"), Hostname: fmt.Sprint(n), Payload: req.GetPayload()}, nil
}

// identityHandler is the HTTP counterpart: it writes "caller|headers|run".
type identityHandler struct {
	calls atomic.Int64
	forge func(*http.Request) *http.Request
}

func (h *identityHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := h.calls.Add(1)
	if h.forge != nil {
		r = h.forge(r)
	}
	caller, ok := mesh.PeerID(r.Context())
	who := "(none)"
	if ok {
		who = caller.String()
	}
	var pairs []string
	for k, vs := range r.Header {
		if strings.HasPrefix(k, "X-") || k == "Baggage" {
			pairs = append(pairs, strings.ToLower(k)+"="+strings.Join(vs, ","))
		}
	}
	sort.Strings(pairs)
	fmt.Fprintf(w, "%s|%s|%d", who, strings.Join(pairs, ";"), n)
}

// forgedHeaders are what a caller adds to pass for spiffe://example.org/payments
// with code written for a sidecar mesh.
var forgedHeaders = map[string]string{
	"x-forwarded-client-cert": `By=spiffe://example.org/server;Hash=00;URI=spiffe://example.org/payments`,
	"x-spiffe-id":             "spiffe://example.org/payments",
	"x-request-id":            "r1", // an ordinary header, which passes
}

func grpcCall(t *testing.T, client testgrpc.TestServiceClient, md map[string]string) *testpb.SimpleResponse {
	t.Helper()
	ctx := callTimeout(t)
	for k, v := range md {
		ctx = metadata.AppendToOutgoingContext(ctx, k, v)
	}
	resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
	if err != nil {
		t.Fatalf("UnaryCall: %v", err)
	}
	return resp
}

// meshHTTPClient is a plain HTTP client with the mesh's client TLS (the
// server must be in src's trust domain).
func meshHTTPClient(t *testing.T, src security.Source, h2 bool) *http.Client {
	t.Helper()
	cfg := meshtls.ClientTLSConfig(src, spiffeid.MatchAny())
	if h2 {
		cfg.NextProtos = []string{"h2"}
	}
	tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: h2}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func httpDo(t *testing.T, c *http.Client, method, url string, hdr map[string]string, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(callTimeout(t), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// TestPeerIDCannotBeForgedByContext is the regression test for
// security.WithPeerID, which let any code put a "verified" caller into a
// context: here handlers (as a buggy handler or middleware would) replace
// the gRPC peer with a hand-made one carrying the victim's real
// certificate, set r.TLS and the identity headers, and the mesh still
// reports the caller of the handshake; outside a mesh request there is no
// caller at all.
func TestPeerIDCannotBeForgedByContext(t *testing.T) {
	ca := pki.NewCA(t, "example.org")
	victim := ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/payments"}})
	clientSrc := ca.NewSource(t, "spiffe://example.org/clients/a")

	t.Run("outside a mesh request", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if id, ok := mesh.PeerID(pki.PeerContext(ctx, victim)); ok {
			t.Errorf("PeerID = %s from a gRPC peer the mesh never saw, want none", id)
		}
	})

	t.Run("gRPC", func(t *testing.T) {
		svc := &identityService{forge: func(ctx context.Context) context.Context {
			ctx = pki.PeerContext(ctx, victim)
			return metadata.NewIncomingContext(ctx, metadata.Pairs("x-spiffe-id", "spiffe://example.org/payments"))
		}}
		addr := startServer(t, svc, mesh.WithIdentity(ca.NewSource(t, "spiffe://example.org/server")),
			// An interceptor of the service's own, after the mesh's, does the same.
			mesh.WithGRPCServerOptions(grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
				return h(pki.PeerContext(ctx, victim), req)
			})))
		resp := grpcCall(t, dial(t, addr, mesh.WithIdentity(clientSrc)), nil)
		if got := resp.GetUsername(); got != "spiffe://example.org/clients/a" {
			t.Errorf("handler's PeerID = %s, want the handshake's spiffe://example.org/clients/a", got)
		}
	})

	t.Run("HTTP", func(t *testing.T) {
		h := &identityHandler{forge: func(r *http.Request) *http.Request {
			r = r.WithContext(pki.PeerContext(r.Context(), victim))
			r.TLS = &tls.ConnectionState{Version: tls.VersionTLS13, HandshakeComplete: true, PeerCertificates: []*x509.Certificate{victim.Leaf}}
			r.Header.Set("X-Spiffe-Id", "spiffe://example.org/payments")
			return r
		}}
		addr, _ := startHTTPServer(t, h, mesh.WithIdentity(ca.NewSource(t, "spiffe://example.org/server")))
		for _, h2 := range []bool{false, true} {
			resp, body := httpDo(t, meshHTTPClient(t, clientSrc, h2), http.MethodGet, "https://"+addr+"/", nil, "")
			if who, _, _ := strings.Cut(body, "|"); resp.StatusCode != http.StatusOK || who != "spiffe://example.org/clients/a" {
				t.Errorf("%s: %d %q, want the handshake's spiffe://example.org/clients/a", resp.Proto, resp.StatusCode, body)
			}
		}
	})
}

// TestIdentityHeadersDroppedBeforeHandler: headers and metadata in which a
// sidecar would name the verified caller can only come from the caller in
// a proxyless mesh, so a handler never sees them; other headers pass.
func TestIdentityHeadersDroppedBeforeHandler(t *testing.T) {
	ca := pki.NewCA(t, "example.org")
	clientSrc := ca.NewSource(t, "spiffe://example.org/clients/a")
	const want = "x-request-id=r1"

	t.Run("gRPC", func(t *testing.T) {
		addr := startServer(t, &identityService{}, mesh.WithIdentity(ca.NewSource(t, "spiffe://example.org/server")))
		resp := grpcCall(t, dial(t, addr, mesh.WithIdentity(clientSrc)), forgedHeaders)
		if got := resp.GetOauthScope(); got != want {
			t.Errorf("handler's metadata %q, want %q", got, want)
		}
	})
	t.Run("HTTP", func(t *testing.T) {
		h := &identityHandler{}
		addr, _ := startHTTPServer(t, h, mesh.WithIdentity(ca.NewSource(t, "spiffe://example.org/server")))
		for _, h2 := range []bool{false, true} {
			resp, body := httpDo(t, meshHTTPClient(t, clientSrc, h2), http.MethodGet, "https://"+addr+"/", forgedHeaders, "")
			if parts := strings.Split(body, "|"); resp.StatusCode != http.StatusOK || len(parts) != 3 || parts[1] != want {
				t.Errorf("%s: %d %q, want the handler to see only %q", resp.Proto, resp.StatusCode, body, want)
			}
		}
	})
}

// TestIdempotencyKeysScopedByVerifiedCaller: over real mTLS with two
// identities, caller B sending caller A's Idempotency-Key (and a forged
// identity header naming A) runs its own request and never gets A's stored
// response; A's repeat still gets A's.
func TestIdempotencyKeysScopedByVerifiedCaller(t *testing.T) {
	ca := pki.NewCA(t, "example.org")
	a := ca.NewSource(t, "spiffe://example.org/clients/a")
	b := ca.NewSource(t, "spiffe://example.org/clients/b")
	asA := map[string]string{"x-spiffe-id": "spiffe://example.org/clients/a", "x-forwarded-client-cert": "URI=spiffe://example.org/clients/a"}

	type result struct {
		Caller   string
		Run      string
		Replayed bool
	}
	steps := []struct {
		name   string
		caller string // "a" or "b"
		forge  bool
		want   result
	}{
		{"A's first call runs", "a", false, result{"spiffe://example.org/clients/a", "1", false}},
		{"B with A's key runs its own", "b", false, result{"spiffe://example.org/clients/b", "2", false}},
		{"B with A's key and A's identity headers runs in B's scope", "b", true, result{"spiffe://example.org/clients/b", "2", true}},
		{"A's repeat gets A's result", "a", false, result{"spiffe://example.org/clients/a", "1", true}},
	}

	t.Run("gRPC", func(t *testing.T) {
		svc := &identityService{}
		addr := startServer(t, svc, mesh.WithIdentity(ca.NewSource(t, "spiffe://example.org/server")),
			mesh.WithIdempotency(idempotency.NewMemoryStore(time.Hour)))
		clients := map[string]testgrpc.TestServiceClient{
			"a": dial(t, addr, mesh.WithIdentity(a)),
			"b": dial(t, addr, mesh.WithIdentity(b)),
		}
		for _, s := range steps {
			ctx := metadata.AppendToOutgoingContext(callTimeout(t), idempotency.MetadataKey, "order-17")
			if s.forge {
				for k, v := range asA {
					ctx = metadata.AppendToOutgoingContext(ctx, k, v)
				}
			}
			var hdr metadata.MD
			resp, err := clients[s.caller].UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("100 MWh")}}, grpc.Header(&hdr))
			if err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			got := result{resp.GetUsername(), resp.GetHostname(), len(hdr.Get(idempotency.ReplayedMetadataKey)) > 0}
			if diff := cmp.Diff(s.want, got); diff != "" {
				t.Errorf("%s (-want +got):\n%s", s.name, diff)
			}
		}
	})

	t.Run("HTTP", func(t *testing.T) {
		h := &identityHandler{}
		addr, _ := startHTTPServer(t, h, mesh.WithIdentity(ca.NewSource(t, "spiffe://example.org/server")),
			mesh.WithIdempotency(idempotency.NewMemoryStore(time.Hour)))
		clients := map[string]*http.Client{"a": meshHTTPClient(t, a, false), "b": meshHTTPClient(t, b, true)}
		for _, s := range steps {
			hdr := map[string]string{idempotency.Header: "order-17"}
			if s.forge {
				for k, v := range asA {
					hdr[k] = v
				}
			}
			resp, body := httpDo(t, clients[s.caller], http.MethodPost, "https://"+addr+"/v1/orders", hdr, "100 MWh")
			parts := strings.Split(body, "|")
			if resp.StatusCode != http.StatusOK || len(parts) != 3 {
				t.Fatalf("%s: %d %q", s.name, resp.StatusCode, body)
			}
			got := result{parts[0], parts[2], resp.Header.Get(idempotency.ReplayedHeader) == "true"}
			if diff := cmp.Diff(s.want, got); diff != "" {
				t.Errorf("%s (-want +got):\n%s", s.name, diff)
			}
		}
	})
}

// TestHealthAuthorization runs the gRPC health service's three methods for
// a caller the authorizer denies everything, with the default (Check and
// Watch open to authenticated callers, List under the rules) and with
// WithHealthAuthorization (all under the rules), and for a caller a rule
// lets probe.
func TestHealthAuthorization(t *testing.T) {
	ca := pki.NewCA(t, "example.org")
	denied := ca.NewSource(t, "spiffe://example.org/clients/denied")
	prober := ca.NewSource(t, "spiffe://example.org/infra/prober")
	rules := mustRules(t, security.Allow("probes", spiffeid.MatchID(id("/infra/prober")), "/grpc.health.v1.Health/*"))

	probe := func(t *testing.T, addr string, src security.Source) map[string]codes.Code {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cc, err := mesh.Dial(ctx, addr, mesh.WithIdentity(src))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		hc := healthpb.NewHealthClient(cc)
		got := map[string]codes.Code{}
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil && resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("Check = %v, want SERVING", resp.GetStatus())
		}
		got["Check"] = status.Code(err)
		w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
		if err == nil {
			var first *healthpb.HealthCheckResponse
			if first, err = w.Recv(); err == nil && first.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Errorf("Watch = %v, want SERVING", first.GetStatus())
			}
		}
		got["Watch"] = status.Code(err)
		_, err = hc.List(ctx, &healthpb.HealthListRequest{})
		got["List"] = status.Code(err)
		return got
	}
	open := map[string]codes.Code{"Check": codes.OK, "Watch": codes.OK, "List": codes.PermissionDenied}
	closed := map[string]codes.Code{"Check": codes.PermissionDenied, "Watch": codes.PermissionDenied, "List": codes.PermissionDenied}
	all := map[string]codes.Code{"Check": codes.OK, "Watch": codes.OK, "List": codes.OK}

	tests := []struct {
		name   string
		opts   []mesh.ServerOption
		caller security.Source
		want   map[string]codes.Code
	}{
		{"default: denied caller may probe, not list", nil, denied, open},
		{"default: prober", nil, prober, all},
		{"WithHealthAuthorization: denied caller refused", []mesh.ServerOption{mesh.WithHealthAuthorization()}, denied, closed},
		{"WithHealthAuthorization: prober allowed by its rule", []mesh.ServerOption{mesh.WithHealthAuthorization()}, prober, all},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			svc := &identityService{}
			opts := append([]mesh.ServerOption{mesh.WithIdentity(ca.NewSource(t, "spiffe://example.org/server")), mesh.WithAuthorizer(rules)}, tc.opts...)
			addr := startServer(t, svc, opts...)
			if diff := cmp.Diff(tc.want, probe(t, addr, tc.caller)); diff != "" {
				t.Errorf("health codes (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("NewHTTPServer refuses the option", func(t *testing.T) {
		_, err := mesh.NewHTTPServer(http.NotFoundHandler(), mesh.WithIdentity(ca.NewSource(t, "spiffe://example.org/server")), mesh.WithHealthAuthorization())
		if err == nil || !strings.Contains(err.Error(), "WithHealthAuthorization does not apply to NewHTTPServer: it configures NewServer only") {
			t.Errorf("err = %v, want one naming the option and where it belongs", err)
		}
	})
}
