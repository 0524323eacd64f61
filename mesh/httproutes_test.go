package mesh_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/controlplane/registration"
	"github.com/gridmesh/gridmesh/internal/admin"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/resilience"
	"github.com/gridmesh/gridmesh/resilience/idempotency"
)

// versionEcho answers with its version's name, after the delay its
// request's "delay" query parameter asks for (or when the request ends).
type versionEcho struct{ name string }

func (h versionEcho) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if d, err := time.ParseDuration(r.URL.Query().Get("delay")); err == nil {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		}
	}
	json.NewEncoder(w).Encode(echoed{Backend: h.name, Path: r.URL.Path})
}

// probeRoute comes first in each test's routes: requests with x-probe go
// to v2. Before the routes apply, requests round-robin over both
// versions, so a run of them all at v2 says the routes are in force.
var probeRoute = controlplane.Route{Name: "probe", Version: "v2",
	Match: controlplane.Match{Headers: []controlplane.HeaderMatch{{Name: "x-probe", Present: true}}}}

// versionsConfig is meshd's config for trading with versions and routes.
func versionsConfig(versions []string, routes []controlplane.Route) *controlplane.Config {
	s := controlplane.Service{Name: "trading", Routes: append([]controlplane.Route{probeRoute}, routes...)}
	for _, v := range versions {
		s.Versions = append(s.Versions, controlplane.Version{Name: v})
	}
	return &controlplane.Config{MTLS: true, Services: []controlplane.Service{s}}
}

// startVersions starts meshd with trading's versions v1 and v2 and routes,
// one mesh HTTP server per version, and an HTTP client of meshd's that has
// the routes in force.
func startVersions(t *testing.T, routes []controlplane.Route, opts ...mesh.DialOption) *http.Client {
	t.Helper()
	c, _ := startVersionsMeshd(t, []string{"v1", "v2"}, routes, opts...)
	return c
}

// startVersionsMeshd is startVersions with the versions to serve (each
// registered, not all declared to meshd: only v1 and v2 are), returning
// meshd and the CA too.
func startVersionsMeshd(t *testing.T, versions []string, routes []controlplane.Route, opts ...mesh.DialOption) (*http.Client, *xdstest.Meshd) {
	t.Helper()
	ca := newDevCA(t, time.Hour)
	m := xdstest.StartMeshd(t, "", versionsConfig([]string{"v1", "v2"}, routes))
	for _, v := range versions {
		addr, _ := startHTTPServer(t, versionEcho{v}, mesh.WithIdentity(devSource(t, ca, "/trading")))
		xdstest.Register(t, m, registration.Registration{Service: "trading", Address: addr, Version: v, SPIFFEID: "spiffe://example.org/trading"})
	}
	c := httpClient(t, append([]mesh.DialOption{mesh.WithIdentity(devSource(t, ca, "/gateway")), mesh.WithControlPlane(m.Addr), mesh.WithInsecurePlaintextControlPlaneForLocalDebugging()}, opts...)...)
	deadline := time.Now().Add(10 * time.Second)
	for run := 0; run < 10; {
		if time.Now().After(deadline) {
			t.Fatal("meshd's routes not in force within 10s")
		}
		if r := getWith(t, c, "http://trading.mesh/", http.Header{"X-Probe": {"1"}}); r.err == nil && r.backend == "v2" {
			run++
		} else {
			run = 0
		}
	}
	return c, m
}

// getWith sends one GET with headers.
func getWith(t *testing.T, c *http.Client, url string, h http.Header) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		return result{at: time.Now(), err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return result{at: time.Now(), err: fmt.Errorf("status %d", resp.StatusCode)}
	}
	var e echoed
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		return result{at: time.Now(), err: err}
	}
	return result{at: time.Now(), backend: e.Backend}
}

// TestHTTPClientSplitsByMeshdWeights: a 90/10 split between v1 and v2
// lands within 3 points over 2,000 requests.
func TestHTTPClientSplitsByMeshdWeights(t *testing.T) {
	c := startVersions(t, []controlplane.Route{{Name: "canary-split",
		Split: []controlplane.WeightedVersion{{Version: "v1", Weight: 90}, {Version: "v2", Weight: 10}}}})
	got, failed := shares(load(t, c, "http://trading.mesh/v1/trades", 2000, 4))
	t.Logf("90/10 split over 2000 requests: v1 %.1f%%, v2 %.1f%%", got["v1"], got["v2"])
	if failed != 0 || len(got) != 2 || got["v2"] < 7 || got["v2"] > 13 {
		t.Errorf("%d failed, shares %v; want v1 90%%, v2 10%%, ±3", failed, got)
	}
}

// TestHTTPClientFollowsMeshdHeaderRoute: requests with x-canary go to v2
// only, whatever the case of the header's name; the rest by the default
// route to v1.
func TestHTTPClientFollowsMeshdHeaderRoute(t *testing.T) {
	c := startVersions(t, []controlplane.Route{
		{Name: "canary", Version: "v2", Match: controlplane.Match{Headers: []controlplane.HeaderMatch{{Name: "x-canary", Present: true}}}},
		{Name: "stable", Version: "v1"},
	})
	counts := map[string]int{}
	for i := range 200 {
		h := http.Header{}
		want := "v1"
		switch i % 3 {
		case 0:
			h.Set("X-Canary", "yes")
			want = "v2"
		case 1:
			h["x-canary"] = []string{""} // set directly, not canonicalized; present though empty
			want = "v2"
		}
		r := getWith(t, c, "http://trading.mesh/v1/trades", h)
		if r.err != nil || r.backend != want {
			t.Fatalf("request %d with headers %v: backend %q, error %v; want %s", i, h, r.backend, r.err, want)
		}
		counts[r.backend]++
	}
	t.Logf("header route: %v", counts)
}

// TestHTTPClientFollowsMeshdPathRoutes: an exact path and a path prefix
// go where their routes say; paths are case-sensitive.
func TestHTTPClientFollowsMeshdPathRoutes(t *testing.T) {
	c := startVersions(t, []controlplane.Route{
		{Name: "quote", Version: "v2", Match: controlplane.Match{Method: "/v1/quote"}},
		{Name: "admin", Version: "v2", Match: controlplane.Match{Prefix: "/admin/"}},
		{Name: "stable", Version: "v1"},
	})
	for path, want := range map[string]string{
		"/v1/quote": "v2", "/v1/quote/": "v1", "/v1/quotes": "v1", "/V1/quote": "v1",
		"/admin/": "v2", "/admin/users?all=1": "v2", "/admin": "v1", "/Admin/users": "v1", "/v1/trades": "v1",
	} {
		for range 5 {
			if r := getWith(t, c, "http://trading.mesh"+path, nil); r.err != nil || r.backend != want {
				t.Errorf("GET %s: backend %q, error %v; want %s", path, r.backend, r.err, want)
				break
			}
		}
	}
}

// TestHTTPClientAppliesMeshdRouteTimeout: a route's timeout ends a request
// that takes longer with a deadline error naming the route; a request
// under it, and one on a route without a timeout, succeed.
func TestHTTPClientAppliesMeshdRouteTimeout(t *testing.T) {
	c := startVersions(t, []controlplane.Route{
		{Name: "quote", Version: "v1", Timeout: 300 * time.Millisecond, Match: controlplane.Match{Prefix: "/v1/quote"}},
		{Name: "stable", Version: "v1"},
	})
	start := time.Now()
	r := getWith(t, c, "http://trading.mesh/v1/quote?delay=3s", nil)
	took := time.Since(start)
	if !errors.Is(r.err, context.DeadlineExceeded) || !strings.Contains(fmt.Sprint(r.err), `route "quote" timeout 300ms`) {
		t.Errorf("a 3s request on a 300ms route: error %v after %v; want a deadline error naming the route", r.err, took)
	}
	t.Logf("a 3s request on a 300ms route failed after %v: %v", took, r.err)
	if r := getWith(t, c, "http://trading.mesh/v1/quote?delay=10ms", nil); r.err != nil {
		t.Errorf("a 10ms request on a 300ms route: %v", r.err)
	}
	if r := getWith(t, c, "http://trading.mesh/v1/trades?delay=600ms", nil); r.err != nil {
		t.Errorf("a 600ms request on a route without timeout: %v", r.err)
	}
}

// TestHTTPClientShowsMeshdClustersOnAdmin: the admin endpoint lists the
// endpoints of every cluster the routes name, with the cluster, and the
// parts of routes the client does not apply.
func TestHTTPClientShowsMeshdClustersOnAdmin(t *testing.T) {
	adm := newAdmin(t)
	startVersions(t, []controlplane.Route{
		{Name: "quote", Version: "v2", Match: controlplane.Match{Prefix: "/v1/quote"}, Timeout: time.Second,
			Retry: &controlplane.RetryPolicy{Attempts: 3}, Fault: &controlplane.Fault{Abort: &controlplane.AbortFault{Code: "UNAVAILABLE", Percent: 5}}},
		{Name: "stable", Version: "v1"},
	}, mesh.WithAdmin(adm))
	adminURL := "http://" + adm.Addr()
	var clusters map[string]int
	waitFor(t, func() bool {
		clusters = map[string]int{}
		for _, tg := range getJSON[[]admin.Target](t, adminURL+"/targets") {
			for _, e := range tg.Endpoints {
				if tg.Target == "xds:///trading" && e.Identity == "spiffe://example.org/trading" {
					clusters[e.Cluster]++
				}
			}
		}
		return clusters["trading"] == 2 && clusters["trading/v1"] == 1 && clusters["trading/v2"] == 1
	})
	var unapplied []string
	for _, p := range getJSON[admin.ConfigView](t, adminURL+"/config").Policies {
		if p.Kind == "route" && p.Scope == "xds:///trading" {
			unapplied = append(unapplied, p.Name+": "+p.Detail)
		}
	}
	want := []string{"quote: NOT APPLIED by the HTTP client: fault: abort 5% with gRPC Unavailable (the route's match, clusters, timeout and retry policy apply)"}
	if diff := cmp.Diff(want, unapplied); diff != "" {
		t.Errorf("route parts shown as not applied (-want +got):\n%s", diff)
	}
}

// TestHTTPClientFollowsMeshdRouteChange: meshd moves every request to a
// version it did not have before (new route and new cluster at once); no
// request fails on the way, as the new routes wait for their cluster.
func TestHTTPClientFollowsMeshdRouteChange(t *testing.T) {
	c, m := startVersionsMeshd(t, []string{"v1", "v2", "v3"}, []controlplane.Route{{Name: "stable", Version: "v1"}})
	if r := getWith(t, c, "http://trading.mesh/", nil); r.err != nil || r.backend != "v1" {
		t.Fatalf("before the change: backend %q, error %v; want v1", r.backend, r.err)
	}
	stop := make(chan struct{})
	results := make(chan []result, 2)
	for range 2 {
		go func() {
			var rs []result
			for {
				select {
				case <-stop:
					results <- rs
					return
				default:
				}
				rs = append(rs, getWith(t, c, "http://trading.mesh/v1/trades", nil))
			}
		}()
	}
	if err := m.SetConfig("promote-v3", versionsConfig([]string{"v1", "v2", "v3"}, []controlplane.Route{{Name: "promoted", Version: "v3"}})); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for run := 0; run < 20; {
		if time.Now().After(deadline) {
			close(stop)
			t.Fatal("requests not all at v3 within 10s of the change")
		}
		if r := getWith(t, c, "http://trading.mesh/", nil); r.err == nil && r.backend == "v3" {
			run++
		} else {
			run = 0
		}
	}
	close(stop)
	var all []result
	for range 2 {
		all = append(all, <-results...)
	}
	got, failed := shares(all)
	t.Logf("%d requests during the change: %v", len(all), got)
	if failed != 0 {
		for _, r := range all {
			if r.err != nil {
				t.Errorf("first failure: %v", r.err)
				break
			}
		}
		t.Errorf("%d of %d requests failed during the change", failed, len(all))
	}
}

// TestHTTPClientAppliesMeshdRouteRetries: with no policy in code, a meshd
// route's retry policy sets how often an HTTP request is tried, as it does
// for a gRPC call; the mesh's safety rules still decide what may be
// retried; a policy in code wins over meshd's.
func TestHTTPClientAppliesMeshdRouteRetries(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	m := xdstest.StartMeshd(t, "", &controlplane.Config{MTLS: true, Services: []controlplane.Service{
		{Name: "trading", Retry: &controlplane.RetryPolicy{Attempts: 4, BaseInterval: time.Millisecond}}}})
	var runs atomic.Int64
	addr, _ := startHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		http.Error(w, "down for the test", http.StatusServiceUnavailable)
	}), mesh.WithIdentity(devSource(t, ca, "/trading")))
	xdstest.Register(t, m, registration.Registration{Service: "trading", Address: addr, SPIFFEID: "spiffe://example.org/trading"})

	code := resilience.DefaultConfig()
	code.Default.Retry.MaxAttempts = 2
	code.Default.Breaker = resilience.Breaker{}
	tests := []struct {
		name   string
		opts   []mesh.DialOption
		method string
		key    string
		want   int64
	}{
		{"GET: meshd's 4 retries", nil, http.MethodGet, "", 5},
		{"keyed POST: meshd's 4 retries", nil, http.MethodPost, "k1", 5},
		{"POST without key: never retried", nil, http.MethodPost, "", 1},
		{"GET: code wins over meshd", []mesh.DialOption{mesh.WithResiliencePolicy(code)}, http.MethodGet, "", 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := httpClient(t, append([]mesh.DialOption{mesh.WithIdentity(devSource(t, ca, "/gateway")), mesh.WithControlPlane(m.Addr), mesh.WithInsecurePlaintextControlPlaneForLocalDebugging()}, tc.opts...)...)
			// The first request waits for meshd's routes; measure after it.
			warm, _ := http.NewRequestWithContext(callTimeout(t), http.MethodPost, "http://trading.mesh/warm-up", nil)
			if resp, err := c.Do(warm); err == nil {
				resp.Body.Close()
			}
			req, _ := http.NewRequestWithContext(callTimeout(t), tc.method, "http://trading.mesh/v1/trades", nil)
			if tc.key != "" {
				req.Header.Set(idempotency.Header, tc.key)
			}
			before := runs.Load()
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable {
				t.Errorf("status %d, want 503", resp.StatusCode)
			}
			if got := runs.Load() - before; got != tc.want {
				t.Errorf("handler ran %d times, want %d", got, tc.want)
			}
		})
	}
}
