package policy_test

import (
	"context"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/gridmesh/gridmesh/examples/rec/policy"
	"github.com/gridmesh/gridmesh/examples/rec/recpb"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestMatrixNamesEveryMethodOnce(t *testing.T) {
	seen := map[string]bool{}
	for svc, desc := range policy.Services {
		for _, m := range policy.Methods(desc) {
			seen[m] = true
			if _, ok := policy.Matrix[m]; !ok {
				t.Errorf("%s method %s is not in the matrix: every method must say who may call it", svc, m)
			}
		}
	}
	for m, callers := range policy.Matrix {
		if !seen[m] {
			t.Errorf("matrix entry %s is no method of the platform's services", m)
		}
		for _, c := range callers {
			if !slices.Contains(policy.Workloads, c) {
				t.Errorf("matrix entry %s allows unknown workload %q", m, c)
			}
		}
	}
	if policy.Allowed(policy.Gateway, recpb.Registry_Transfer_FullMethodName) || !policy.Allowed(policy.Settlement, recpb.Registry_Transfer_FullMethodName) {
		t.Errorf("only settlement may transfer ownership")
	}
}

// TestEveryPairInProcess serves every service (unimplemented handlers) and
// the gateway routes behind the real authorizers, with identities from an
// in-process CA, and calls each method and route as each workload: denied
// pairs must get PERMISSION_DENIED / 403 before any handler runs; allowed
// pairs must reach the handler. The e2e test repeats this against the real
// processes.
func TestEveryPairInProcess(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	td := spiffeid.RequireTrustDomainFromString("gridmesh.dev")
	ca, err := security.NewDevCA(td, security.DevCAConfig{SVIDTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	srcs := map[string]*security.DevSource{}
	for _, w := range policy.Workloads {
		src, err := ca.Source(policy.ID(td, w))
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		srcs[w] = src
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	serve := func(serve func(context.Context, net.Listener) error) string {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := serve(sctx, lis); err != nil {
				t.Errorf("serve: %v", err)
			}
		}()
		return lis.Addr().String()
	}
	impls := map[string]any{
		policy.Registry:   &recpb.UnimplementedRegistryServer{},
		policy.Accounts:   &recpb.UnimplementedAccountsServer{},
		policy.Trading:    &recpb.UnimplementedTradingServer{},
		policy.Settlement: &recpb.UnimplementedSettlementServer{},
	}
	addrs := map[string]string{}
	for svc, desc := range policy.Services {
		authz, err := policy.Authorizer(td, desc)
		if err != nil {
			t.Fatal(err)
		}
		srv, err := mesh.NewServer(mesh.WithIdentity(srcs[svc]), mesh.WithAuthorizer(authz), mesh.WithoutTelemetry(), mesh.WithDrainTimeout(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		srv.RegisterService(desc, impls[svc])
		addrs[svc] = serve(srv.Serve)
	}
	authz, err := policy.GatewayAuthorizer(td)
	if err != nil {
		t.Fatal(err)
	}
	hs, err := mesh.NewHTTPServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) }),
		mesh.WithIdentity(srcs[policy.Gateway]), mesh.WithAuthorizer(authz), mesh.WithoutTelemetry(), mesh.WithDrainTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer hs.Close()
	gateway := serve(hs.Serve)

	var denied, allowed int
	for _, w := range policy.Workloads {
		for svc, desc := range policy.Services {
			cc, err := mesh.Dial(ctx, addrs[svc], mesh.WithIdentity(srcs[w]), mesh.WithServerID(policy.ID(td, svc)), mesh.WithoutResilience(), mesh.WithoutTelemetry())
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range policy.Methods(desc) {
				err := cc.Invoke(ctx, m, &emptypb.Empty{}, &emptypb.Empty{}, grpc.WaitForReady(true))
				want := codes.PermissionDenied
				if policy.Allowed(w, m) {
					want, allowed = codes.Unimplemented, allowed+1
				} else {
					denied++
				}
				if got := status.Code(err); got != want {
					t.Errorf("%s calling %s: %v, want %v", w, m, err, want)
				}
			}
			cc.Close()
		}
		hc, err := mesh.HTTPClient(mesh.WithIdentity(srcs[w]), mesh.WithServerID(policy.ID(td, policy.Gateway)), mesh.WithoutTelemetry())
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range policy.GatewayRoutes {
			verb, path, _ := strings.Cut(r.Example, " ")
			req, err := http.NewRequestWithContext(ctx, verb, "https://"+gateway+path, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatalf("%s %s: %v", w, r.Example, err)
			}
			resp.Body.Close()
			want := http.StatusForbidden
			if r.HTTPAllowed(w) {
				want, allowed = http.StatusTeapot, allowed+1
			} else {
				denied++
			}
			if resp.StatusCode != want {
				t.Errorf("%s calling %s: %d, want %d", w, r.Example, resp.StatusCode, want)
			}
		}
		hc.Transport.(*mesh.HTTPTransport).Close()
	}
	t.Logf("%d denied pairs refused, %d allowed pairs reached their handler", denied, allowed)
	stop()
}
