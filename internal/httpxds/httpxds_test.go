package httpxds_test

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherpb "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/controlplane/registration"
	"github.com/gridmesh/gridmesh/internal/httpxds"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
	"github.com/gridmesh/gridmesh/internal/xdsresource"
	"github.com/gridmesh/gridmesh/internal/xdsstatus"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestWatchFollowsClusterAndEndpoints(t *testing.T) {
	m := xdstest.StartMeshd(t, "", &controlplane.Config{MTLS: true, Services: []controlplane.Service{{Name: "trading", LB: "least_request"}}})
	xdstest.Register(t, m, registration.Registration{Service: "trading", Address: "127.0.0.1:1001", SPIFFEID: "spiffe://example.org/trading"})
	xdstest.Register(t, m, registration.Registration{Service: "trading", Address: "127.0.0.1:1002", SPIFFEID: "spiffe://example.org/trading", Weight: 3})

	updates := make(chan httpxds.Update, 16)
	w, err := httpxds.Start(httpxds.Config{ServerURI: m.Addr, Credentials: insecure.NewCredentials(), NodeID: "test", Cluster: "trading"}, func(u httpxds.Update) { updates <- u })
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := w.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := httpxds.Update{Clusters: map[string]httpxds.Cluster{"trading": {
		Endpoints: []httpxds.Endpoint{{Addr: "127.0.0.1:1001", Weight: 1}, {Addr: "127.0.0.1:1002", Weight: 3}},
		Policy:    "least_request",
		SANs:      []xdsresource.SAN{{Kind: "exact", Pattern: "spiffe://example.org/trading"}},
	}}}
	if diff := cmp.Diff(want, got, cmp.Comparer(xdsresource.SAN.Equal)); diff != "" {
		t.Errorf("first update (-want +got):\n%s", diff)
	}
	if err := registration.NewClient(m.HTTPAddr).Deregister(ctx, "trading", "127.0.0.1:1001"); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case u := <-updates:
			if eps := u.Clusters["trading"].Endpoints; len(eps) == 1 && eps[0].Addr == "127.0.0.1:1002" {
				return
			}
		case <-ctx.Done():
			t.Fatalf("no update without the deregistered endpoint; last %+v", w.Last())
		}
	}
}

func TestWaitNamesTheControlPlaneWhenUnreachable(t *testing.T) {
	w, err := httpxds.Start(httpxds.Config{ServerURI: "127.0.0.1:1", Credentials: insecure.NewCredentials(), Cluster: "trading"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := w.Wait(ctx); err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("Wait = %v, want an error naming the control plane", err)
	}
}

// TestWatchAppliesRoutes follows meshd's routes for a service and every
// cluster they name, and matches requests as grpc-go does.
func TestWatchAppliesRoutes(t *testing.T) {
	m := xdstest.StartMeshd(t, "", &controlplane.Config{Services: []controlplane.Service{{
		Name:     "trading",
		Versions: []controlplane.Version{{Name: "v1"}, {Name: "v2"}},
		Routes: []controlplane.Route{
			{Name: "canary", Match: controlplane.Match{Headers: []controlplane.HeaderMatch{{Name: "x-canary", Present: true}}}, Version: "v2"},
			{Name: "not-beta", Match: controlplane.Match{Prefix: "/beta/", Headers: []controlplane.HeaderMatch{{Name: "x-user", Regex: "ann|bob", Invert: true}}}, Version: "v2"},
			{Name: "quote", Match: controlplane.Match{Method: "/v1/quote"}, Version: "v1", Timeout: 250 * time.Millisecond,
				Retry: &controlplane.RetryPolicy{Attempts: 3}},
			{Name: "split", Match: controlplane.Match{Prefix: "/"}, Split: []controlplane.WeightedVersion{{Version: "v1", Weight: 90}, {Version: "v2", Weight: 10}}},
		},
	}}})
	xdstest.Register(t, m, registration.Registration{Service: "trading", Address: "127.0.0.1:1001", Version: "v1"})
	xdstest.Register(t, m, registration.Registration{Service: "trading", Address: "127.0.0.1:1002", Version: "v2"})

	w, err := httpxds.Start(httpxds.Config{ServerURI: m.Addr, Credentials: insecure.NewCredentials(), NodeID: "test", Cluster: "trading", Listener: "trading"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := w.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	xdstest.WaitFor(ctx, t, "routes and their clusters", func() error {
		u := w.Last()
		if u.Routes == nil || len(u.Clusters["trading/v1"].Endpoints) == 0 || len(u.Clusters["trading/v2"].Endpoints) == 0 {
			return xdstest.ErrNotYet
		}
		return nil
	})
	u := w.Last()
	if diff := cmp.Diff([]string{"trading", "trading/v1", "trading/v2"}, slices.Sorted(maps.Keys(u.Clusters))); diff != "" {
		t.Errorf("clusters (-want +got):\n%s", diff)
	}
	for _, tc := range []struct {
		path    string
		headers map[string]string
		want    string // route name, "" for none
	}{
		{path: "/v1/trades", headers: map[string]string{"X-Canary": ""}, want: "canary"},
		{path: "/v1/trades", headers: map[string]string{"x-canary": "yes"}, want: "canary"},
		{path: "/beta/x", want: "split"}, // a value matcher fails on an absent header, inverted or not
		{path: "/beta/x", headers: map[string]string{"X-User": "carl"}, want: "not-beta"},
		{path: "/beta/x", headers: map[string]string{"X-User": "bob"}, want: "split"},
		{path: "/beta/x", headers: map[string]string{"X-User": "bobby"}, want: "not-beta"}, // full match
		{path: "/Beta/x", headers: map[string]string{"X-User": "carl"}, want: "split"},     // case-sensitive path
		{path: "/v1/quote", want: "quote"},
		{path: "/v1/quote/", want: "split"},
		{path: "/v1/trades", want: "split"},
	} {
		h := http.Header{}
		for k, v := range tc.headers {
			h[k] = []string{v} // as sent, not canonicalized
		}
		got := ""
		if r := httpxds.Find(u.Routes, tc.path, h); r != nil {
			got = r.Name
		}
		if got != tc.want {
			t.Errorf("Find(%q, %v) = route %q, want %q", tc.path, tc.headers, got, tc.want)
		}
	}
	quote := httpxds.Find(u.Routes, "/v1/quote", nil)
	if quote.Timeout != 250*time.Millisecond || quote.Pick() != "trading/v1" {
		t.Errorf("quote route: timeout %v, cluster %q; want 250ms, trading/v1", quote.Timeout, quote.Pick())
	}
	if quote.Unapplied != nil {
		t.Errorf("quote route's unapplied parts: %v, want none (its retry policy applies)", quote.Unapplied)
	}
	if diff := cmp.Diff(&xdsresource.Retry{Attempts: 4, Base: 25 * time.Millisecond, Max: 250 * time.Millisecond, On: "unavailable"}, quote.Retry); diff != "" {
		t.Errorf("quote route's retry policy (-want +got):\n%s", diff)
	}
	split := httpxds.Find(u.Routes, "/", nil)
	counts := map[string]int{}
	for range 10000 {
		counts[split.Pick()]++
	}
	if v2 := float64(counts["trading/v2"]) / 100; v2 < 8.5 || v2 > 11.5 {
		t.Errorf("split picks %v; want about 10%% trading/v2", counts)
	}
}

// setRoutes serves version: the listener and main cluster "svc" of
// xdstest.ClientResources, a route configuration of routes, and extra
// clusters (with one endpoint each): resources meshd never sends (a route
// to a cluster that does not exist yet, a bad regex).
func setRoutes(t *testing.T, s *xdstest.SnapshotServer, version string, routes []*routepb.Route, extra ...string) {
	t.Helper()
	l, rc, c, e := xdstest.ClientResources(t, "svc", "127.0.0.1:1001")
	rc.VirtualHosts[0].Routes = routes
	res := map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: {l}, resourcev3.RouteType: {rc}, resourcev3.ClusterType: {c}, resourcev3.EndpointType: {e},
	}
	for i, name := range extra {
		c2 := proto.Clone(c).(*clusterpb.Cluster)
		c2.Name = name
		_, _, _, e2 := xdstest.ClientResources(t, name, "127.0.0.1:"+strconv.Itoa(2001+i))
		res[resourcev3.ClusterType] = append(res[resourcev3.ClusterType], c2)
		res[resourcev3.EndpointType] = append(res[resourcev3.EndpointType], e2)
	}
	s.SetResources(t, version, res)
}

func routeTo(cluster string, match *routepb.RouteMatch) *routepb.Route {
	return &routepb.Route{Name: "to-" + cluster, Match: match,
		Action: &routepb.Route_Route{Route: &routepb.RouteAction{ClusterSpecifier: &routepb.RouteAction_Cluster{Cluster: cluster}}}}
}

// TestWatchAppliesRoutesOnceTheirClustersAreKnown: a route table naming a
// cluster the client does not have yet waits for it, so no update ever
// has routes to a cluster it lacks; a route table the client cannot use
// is NACKed and the last good one stays.
func TestWatchAppliesRoutesOnceTheirClustersAreKnown(t *testing.T) {
	ads := xdstest.StartSnapshotServer(t)
	all := &routepb.RouteMatch{PathSpecifier: &routepb.RouteMatch_Prefix{Prefix: "/"}}
	setRoutes(t, ads, "1", []*routepb.Route{routeTo("svc/new", all)})

	acks := make(chan xdsstatus.Update, 64)
	rec := xdsstatus.New(func(u xdsstatus.Update) { acks <- u })
	defer rec.Close()
	var mu sync.Mutex
	var bad []string
	w, err := httpxds.Start(httpxds.Config{ServerURI: ads.Addr, Credentials: insecure.NewCredentials(), NodeID: "test", Cluster: "svc", Listener: "svc",
		DialOptions: []grpc.DialOption{grpc.WithChainStreamInterceptor(rec.StreamInterceptor())}}, func(u httpxds.Update) {
		for _, r := range u.Routes {
			for _, c := range r.Clusters {
				if _, ok := u.Clusters[c.Name]; !ok {
					mu.Lock()
					bad = append(bad, fmt.Sprintf("route %q to %q without that cluster: %+v", r.Name, c.Name, u.Clusters))
					mu.Unlock()
				}
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := w.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	waitAck := func(typeURL string, nack bool) xdsstatus.Update {
		t.Helper()
		for {
			select {
			case u := <-acks:
				if u.TypeURL == typeURL && u.NACK == nack {
					return u
				}
			case <-ctx.Done():
				t.Fatalf("no %s (NACK %v) within 10s", typeURL, nack)
			}
		}
	}
	waitAck(xdsstatus.RouteType, false)
	// The watch published what it had after taking the routes: no routes.
	if u := w.Last(); u.Routes != nil {
		t.Errorf("routes to svc/new applied before svc/new is known: %+v", u)
	}

	setRoutes(t, ads, "2", []*routepb.Route{routeTo("svc/new", all)}, "svc/new")
	xdstest.WaitFor(ctx, t, "routes to svc/new", func() error {
		if u := w.Last(); u.Routes == nil || u.Clusters["svc/new"].Endpoints == nil {
			return xdstest.ErrNotYet
		}
		return nil
	})

	regex := &routepb.RouteMatch{PathSpecifier: &routepb.RouteMatch_SafeRegex{SafeRegex: &matcherpb.RegexMatcher{Regex: "(unclosed"}}}
	setRoutes(t, ads, "3", []*routepb.Route{routeTo("svc", regex), routeTo("svc", all)}, "svc/new")
	if u := waitAck(xdsstatus.RouteType, true); !strings.Contains(u.Detail, "(unclosed") {
		t.Errorf("NACK detail %q does not name the bad regex", u.Detail)
	}
	if r := httpxds.Find(w.Last().Routes, "/x", nil); r == nil || r.Pick() != "svc/new" {
		t.Errorf("after a NACK, the last good routes are not in force: %+v", r)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, b := range bad {
		t.Error(b)
	}
}
