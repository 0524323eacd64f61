package mesh_test

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/controlplane/registration"
	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/internal/admin"
	"github.com/gridmesh/gridmesh/internal/meshtls"
	"github.com/gridmesh/gridmesh/internal/testutil/consul"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
	"github.com/gridmesh/gridmesh/mesh"
)

// TestHTTPClientFollowsConsul resolves http://trading.mesh through Consul:
// the registered instances share the calls, and an instance that
// deregisters stops getting them.
func TestHTTPClientFollowsConsul(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	agent := consul.Start(t)
	reg, err := discovery.New(discovery.Config{Consul: agent.Client(), TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	// discovery derives spiffe://example.org/service/trading for instances.
	bs := startBackends(t, 3, mesh.WithIdentity(devSource(t, ca, "/service/trading")))
	var regs []*discovery.Registration
	for _, b := range bs {
		host, port, _ := net.SplitHostPort(b.addr)
		p, _ := strconv.Atoi(port)
		r, err := reg.Register(callTimeout(t), discovery.Service{Name: "trading", Address: host, Port: p})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		regs = append(regs, r)
	}
	c := httpClient(t, mesh.WithIdentity(devSource(t, ca, "/gateway")), mesh.WithRegistry(reg))
	got, failed := shares(load(t, c, "http://trading.mesh/v1/trades", 300, 3))
	if failed != 0 || len(got) != 3 {
		t.Fatalf("%d failed, shares %v; want 0 failed over 3 backends", failed, got)
	}
	if err := regs[0].Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := bs[0].h.calls.Load()
		_, failed := shares(load(t, c, "http://trading.mesh/v1/trades", 30, 3))
		if failed != 0 {
			t.Fatalf("%d requests failed after a deregistration", failed)
		}
		if bs[0].h.calls.Load() == before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the deregistered instance still gets requests after 10s")
		}
	}
}

// TestHTTPClientFollowsXDS takes endpoints, balancing policy and accepted
// SPIFFE IDs from meshd.
func TestHTTPClientFollowsXDS(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	m := xdstest.StartMeshd(t, "", &controlplane.Config{MTLS: true, Services: []controlplane.Service{{Name: "trading", LB: "least_request"}}},
		controlplane.WithMTLS(controlplane.MTLSConfig{Source: devSource(t, ca, "/meshd"), Operators: []spiffeid.ID{id("/operator")}}))
	m.ClientTLS = meshtls.ClientTLSConfig(devSource(t, ca, "/operator"), spiffeid.MatchID(id("/meshd")))
	bs := startBackends(t, 3, mesh.WithIdentity(devSource(t, ca, "/trading")))
	impostor := startBackends(t, 1, mesh.WithIdentity(devSource(t, ca, "/impostor")))
	for _, b := range append(bs, impostor...) {
		// The impostor registers under the right ID but cannot present it.
		xdstest.Register(t, m, registration.Registration{Service: "trading", Address: b.addr, SPIFFEID: "spiffe://example.org/trading"})
	}
	c := httpClient(t, mesh.WithIdentity(devSource(t, ca, "/gateway")), mesh.WithControlPlane(m.Addr))
	got, failed := shares(load(t, c, "http://trading.mesh/v1/trades", 300, 3))
	if failed != 0 || len(got) != 3 || impostor[0].h.calls.Load() != 0 {
		t.Fatalf("%d failed, shares %v, impostor served %d; want 0 failed over the 3 real backends", failed, got, impostor[0].h.calls.Load())
	}
	t.Logf("xDS least_request over 3 backends: %.1f%% %.1f%% %.1f%%", got["b0"], got["b1"], got["b2"])

	// Deregistered at meshd: no more requests.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.Client(t).Deregister(ctx, "trading", bs[0].addr); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := bs[0].h.calls.Load()
		if _, failed := shares(load(t, c, "http://trading.mesh/", 30, 3)); failed != 0 {
			t.Fatalf("%d requests failed after a deregistration", failed)
		}
		if bs[0].h.calls.Load() == before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the deregistered endpoint still gets requests after 10s")
		}
	}
}

// TestHTTPClientHonoursXDSWeights: with round robin, endpoints get calls in
// proportion to the weights they registered with meshd.
func TestHTTPClientHonoursXDSWeights(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	m := xdstest.StartMeshd(t, "", &controlplane.Config{Services: []controlplane.Service{{Name: "trading"}}})
	bs := startBackends(t, 2, mesh.WithIdentity(devSource(t, ca, "/trading")))
	xdstest.Register(t, m, registration.Registration{Service: "trading", Address: bs[0].addr, Weight: 1})
	xdstest.Register(t, m, registration.Registration{Service: "trading", Address: bs[1].addr, Weight: 3})
	c := httpClient(t, mesh.WithIdentity(devSource(t, ca, "/gateway")), mesh.WithControlPlane(m.Addr), mesh.WithInsecurePlaintextControlPlaneForLocalDebugging(), mesh.WithoutResilience())
	// meshd pushes each registration as it comes: wait until the client has
	// reached both endpoints before measuring.
	deadline := time.Now().Add(10 * time.Second)
	for bs[0].h.calls.Load() == 0 || bs[1].h.calls.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the client did not reach both endpoints within 10s")
		}
		getOnce(t, c, "http://trading.mesh/")
	}
	rs := load(t, c, "http://trading.mesh/", 400, 1)
	got, failed := shares(rs)
	if failed != 0 || got["b0"] != 25 || got["b1"] != 75 {
		for _, r := range rs {
			if r.err != nil {
				t.Logf("first failure: %v", r.err)
				break
			}
		}
		t.Errorf("%d failed, shares %v; want b0 25%%, b1 75%%", failed, got)
	}
}

// TestHTTPClientTargetsOnAdminEndpoint: the HTTP client's services show on
// the admin endpoint with their balancer and endpoints, and an xds:///
// service with the clusters and endpoints its xDS stream accepted.
func TestHTTPClientTargetsOnAdminEndpoint(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	// meshd has a fault route for trading, which the HTTP client does not
	// apply: it must say so.
	m := xdstest.StartMeshd(t, "", &controlplane.Config{MTLS: true, Services: []controlplane.Service{{Name: "trading", LB: "least_request",
		Routes: []controlplane.Route{{Name: "chaos", Match: controlplane.Match{Headers: []controlplane.HeaderMatch{{Name: "x-chaos", Exact: "on"}}},
			Fault: &controlplane.Fault{Abort: &controlplane.AbortFault{Code: "UNAVAILABLE", Percent: 50}}}}}}})
	bs := startBackends(t, 1, mesh.WithIdentity(devSource(t, ca, "/trading")))
	xdstest.Register(t, m, registration.Registration{Service: "trading", Address: bs[0].addr, SPIFFEID: "spiffe://example.org/trading"})
	var logs lockedBuffer
	adm := newAdmin(t)
	tr, err := mesh.NewHTTPTransport(mesh.WithIdentity(devSource(t, ca, "/gateway")), mesh.WithControlPlane(m.Addr), mesh.WithInsecurePlaintextControlPlaneForLocalDebugging(),
		mesh.WithAdmin(adm), mesh.WithHTTPTarget("ledger", "static:///"+bs[0].addr),
		mesh.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	c := &http.Client{Transport: tr}
	for _, url := range []string{"http://trading.mesh/", "http://ledger/"} {
		if _, failed := shares(load(t, c, url, 3, 1)); failed != 0 {
			t.Fatalf("%s: %d of 3 requests failed", url, failed)
		}
	}
	adminURL := "http://" + adm.Addr()
	want := []admin.Target{
		{Target: "xds:///trading", Balancer: "least_request", Source: "xds", Endpoints: []admin.Endpoint{
			{Cluster: "trading", Address: bs[0].addr, Identity: "spiffe://example.org/trading", State: "healthy", Weight: 1}}},
		{Target: "static:///" + bs[0].addr, Balancer: "round_robin", Source: "static", Endpoints: []admin.Endpoint{
			{Address: bs[0].addr, Weight: 1}}},
	}
	got := getJSON[[]admin.Target](t, adminURL+"/targets")
	if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(admin.Target{}, "Observed"),
		cmpopts.SortSlices(func(a, b admin.Target) bool { return a.Target < b.Target })); diff != "" {
		t.Errorf("targets (-want +got):\n%s", diff)
	}
	var (
		cv   admin.ConfigView
		diff string
	)
	waitFor(t, func() bool {
		cv = getJSON[admin.ConfigView](t, adminURL+"/config")
		var held []string
		for _, u := range cv.Updates {
			held = append(held, u.Scope+" "+u.Resource[strings.LastIndex(u.Resource, ".")+1:]+" "+u.Name+" "+u.Status)
		}
		diff = cmp.Diff([]string{"xds:///trading Listener trading ACKED", "xds:///trading RouteConfiguration trading ACKED",
			"xds:///trading Cluster trading ACKED", "xds:///trading ClusterLoadAssignment trading ACKED"}, held)
		return diff == ""
	})
	if diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	var unapplied []string
	for _, p := range cv.Policies {
		if p.Kind == "route" && p.Scope == "xds:///trading" && strings.HasPrefix(p.Detail, "NOT APPLIED by the HTTP client") {
			unapplied = append(unapplied, p.Name+": "+p.Detail)
		}
	}
	// The route's fault is not applied, its match and cluster are;
	// meshd's default route is applied whole: not listed.
	if diff := cmp.Diff([]string{"chaos: NOT APPLIED by the HTTP client: fault: abort 50% with gRPC Unavailable (the route's match, clusters, timeout and retry policy apply)"}, unapplied); diff != "" {
		t.Errorf("route parts shown as not applied (-want +got):\n%s\npolicies: %+v", diff, cv.Policies)
	}
	waitFor(t, func() bool {
		return strings.Contains(logs.String(), "meshd route retries and faults not applied by the HTTP client")
	})
	if !strings.Contains(logs.String(), "routes=[chaos]") {
		t.Errorf("the warning does not name the route:\n%s", logs.String())
	}
}
