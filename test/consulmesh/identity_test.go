package consulmesh_test

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/internal/testutil/consul"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestConsulIdentitiesMeshedCalls: services whose SVIDs come from Consul's
// Connect CA call each other through the mesh, over gRPC and HTTP; the
// mesh's rules match Consul's SPIFFE IDs exactly, by trust domain and by
// path prefix, the handler sees the caller's Consul ID, and a client
// expecting another service's ID refuses the server.
func TestConsulIdentitiesMeshedCalls(t *testing.T) {
	a := consul.Start(t)
	trading := consulSource(t, a, "trading")
	web := consulSource(t, a, "web")
	batch := consulSource(t, a, "batch")
	ops := consulSource(t, a, "ops")
	td := trustDomain(t, trading)
	id := func(svc string) string { return consulID(t, trading, "dc1", svc).String() }
	tradingID := consulID(t, trading, "dc1", "trading")

	opsPrefix := consulID(t, trading, "dc1", "ops")
	authz, err := security.Rules(
		security.Allow("web-unary", spiffeid.MatchID(consulID(t, trading, "dc1", "web")), unaryCall),
		security.Allow("ops-anything", security.PathPrefix(opsPrefix)),
		security.Refuse("no-empty-from-cluster", spiffeid.MatchMemberOf(td), emptyCall),
	)
	if err != nil {
		t.Fatal(err)
	}
	svc := &echo{}
	addr := serve(t, svc, mesh.WithIdentity(trading), mesh.WithAuthorizer(authz))
	httpAuthz, err := security.HTTPRules(
		security.Allow("web-reads", spiffeid.MatchID(consulID(t, trading, "dc1", "web")), "GET /v1/**"),
	)
	if err != nil {
		t.Fatal(err)
	}
	base := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		caller, _ := mesh.PeerID(r.Context())
		w.Write([]byte(caller.String()))
	}), mesh.WithIdentity(trading), mesh.WithAuthorizer(httpAuthz))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	grpcTests := []struct {
		name   string
		src    *security.ConsulSource
		method string
		want   codes.Code
		caller string // the ID the handler must see, when allowed
	}{
		{"exact ID allowed", web, unaryCall, codes.OK, id("web")},
		{"path-prefix rule", ops, unaryCall, codes.OK, id("ops")},
		{"member-of refuse beats allow", ops, emptyCall, codes.PermissionDenied, ""},
		{"no rule", batch, unaryCall, codes.PermissionDenied, ""},
	}
	for _, tt := range grpcTests {
		t.Run("grpc/"+tt.name, func(t *testing.T) {
			c := testgrpc.NewTestServiceClient(dial(t, addr, mesh.WithIdentity(tt.src), mesh.WithServerID(tradingID)))
			var err error
			var got string
			if tt.method == unaryCall {
				var resp *testpb.SimpleResponse
				resp, err = c.UnaryCall(ctx, &testpb.SimpleRequest{})
				got = resp.GetUsername()
			} else {
				_, err = c.EmptyCall(ctx, &testpb.Empty{})
			}
			if status.Code(err) != tt.want {
				t.Fatalf("%s: %v, want %v", tt.method, err, tt.want)
			}
			if tt.want == codes.OK && got != tt.caller {
				t.Errorf("handler saw %q, want %q", got, tt.caller)
			}
		})
	}
	t.Run("grpc/wrong server ID refused", func(t *testing.T) {
		c := testgrpc.NewTestServiceClient(dial(t, addr, mesh.WithIdentity(web), mesh.WithServerID(consulID(t, trading, "dc1", "payments"))))
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		defer ccancel()
		before := svc.calls.Load()
		_, err := c.UnaryCall(cctx, &testpb.SimpleRequest{})
		if err == nil || !strings.Contains(err.Error(), "svc/trading") {
			t.Errorf("call to a server that is not payments: %v, want a handshake error naming the server's ID", err)
		}
		if svc.calls.Load() != before {
			t.Error("the call reached the handler")
		}
	})

	httpTests := []struct {
		name   string
		src    *security.ConsulSource
		method string
		path   string
		want   int
	}{
		{"exact ID allowed", web, "GET", "/v1/trades", http.StatusOK},
		{"method not allowed", web, "POST", "/v1/trades", http.StatusForbidden},
		{"no rule", batch, "GET", "/v1/trades", http.StatusForbidden},
	}
	for _, tt := range httpTests {
		t.Run("http/"+tt.name, func(t *testing.T) {
			c, err := mesh.HTTPClient(mesh.WithIdentity(tt.src), mesh.WithServerID(tradingID))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Transport.(*mesh.HTTPTransport).Close()
			code, body, err := httpDo(ctx, c, tt.method, base+tt.path)
			if err != nil || code != tt.want {
				t.Fatalf("%s %s: %d %q %v, want %d", tt.method, tt.path, code, body, err, tt.want)
			}
			if code == http.StatusOK && body != id("web") {
				t.Errorf("handler saw %q, want %s", body, id("web"))
			}
		})
	}
}

// TestConsulCARotationUnderLoad: a CA rotation forced through Consul's API
// while calls run on long-lived connections and on a new connection per
// call (a new handshake each, with whatever SVIDs and bundles the sources
// hold at that moment): no call fails; both sides end up with leaves
// signed by the new root, and the server sees a client certificate
// issued by it.
func TestConsulCARotationUnderLoad(t *testing.T) {
	a := consul.Start(t)
	trading := consulSource(t, a, "trading")
	web := consulSource(t, a, "web")
	tradingID := consulID(t, trading, "dc1", "trading")
	webID := consulID(t, trading, "dc1", "web")
	authz, err := security.Rules(security.Allow("web", spiffeid.MatchID(webID)))
	if err != nil {
		t.Fatal(err)
	}
	svc := &echo{}
	addr := serve(t, svc, mesh.WithIdentity(trading), mesh.WithAuthorizer(authz))
	dialOpts := []mesh.DialOption{mesh.WithIdentity(web), mesh.WithServerID(tradingID)}
	longLived := testgrpc.NewTestServiceClient(dial(t, addr, dialOpts...))

	var calls, failed atomic.Int64
	var errMu sync.Mutex
	var errs []string
	call := func(ctx context.Context, c testgrpc.TestServiceClient) {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		resp, err := c.UnaryCall(cctx, &testpb.SimpleRequest{})
		if ctx.Err() != nil {
			return // stopped mid-call: not counted
		}
		calls.Add(1)
		if err == nil && resp.GetUsername() != webID.String() {
			err = status.Errorf(codes.Internal, "handler saw %q", resp.GetUsername())
		}
		if err != nil {
			failed.Add(1)
			errMu.Lock()
			if len(errs) < 10 {
				errs = append(errs, err.Error())
			}
			errMu.Unlock()
		}
	}
	loadCtx, stopLoad := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-loadCtx.Done():
					return
				case <-tick.C:
				}
				if w%2 == 0 {
					call(loadCtx, longLived)
					continue
				}
				cc, err := mesh.Dial(loadCtx, addr, dialOpts...)
				if err != nil {
					if loadCtx.Err() == nil {
						calls.Add(1)
						failed.Add(1)
					}
					continue
				}
				call(loadCtx, testgrpc.NewTestServiceClient(cc))
				cc.Close()
			}
		})
	}
	defer func() { stopLoad(); wg.Wait() }()

	time.Sleep(500 * time.Millisecond) // load before the rotation: it is the point of the test
	start := time.Now()
	newRoot := a.RotateCA(t)
	newSKI := rootSKI(t, a.CARoots(t), newRoot)
	signedByNew := func(src *security.ConsulSource) bool {
		svid, err := src.GetX509SVID()
		return err == nil && bytes.Equal(svid.Certificates[0].AuthorityKeyId, newSKI)
	}
	deadline := time.Now().Add(45 * time.Second)
	var tradingAt, webAt time.Duration
	for tradingAt == 0 || webAt == 0 {
		if tradingAt == 0 && signedByNew(trading) {
			tradingAt = time.Since(start)
		}
		if webAt == 0 && signedByNew(web) {
			webAt = time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("45s after the rotation: trading on the new root %v, web %v", tradingAt > 0, webAt > 0)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Keep the load up until the server has seen the client's new leaf on a
	// fresh handshake, and 3 seconds more on the new leaves.
	if _, ok := poll(10*time.Second, func() bool { return svc.sawIssuer(newSKI) }); !ok {
		t.Error("the server never saw a client certificate issued by the new root")
	}
	time.Sleep(3 * time.Second)
	stopLoad()
	wg.Wait()
	t.Logf("rotation: new-root leaf after %v (trading) and %v (web); %d calls, %d failed", tradingAt.Round(time.Millisecond), webAt.Round(time.Millisecond), calls.Load(), failed.Load())
	if calls.Load() == 0 {
		t.Fatal("no calls made")
	}
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d calls failed; first errors:\n  %s", n, calls.Load(), strings.Join(errs, "\n  "))
	}
}

// poll calls cond every 10ms until it holds or d passes.
func poll(d time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for {
		if cond() {
			return time.Since(start), true
		}
		if time.Since(start) > d {
			return time.Since(start), false
		}
		time.Sleep(10 * time.Millisecond)
	}
}
