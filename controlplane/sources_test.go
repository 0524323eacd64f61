package controlplane_test

import (
	"strings"
	"testing"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/gridmesh/gridmesh/controlplane"
)

// TestSetSource: a source's services join the config's; the config file's
// definition of a service wins over the source's; endpoints carry their
// health into EDS; a bad set is refused and the last good one stays.
func TestSetSource(t *testing.T) {
	s := controlplane.NewServer()
	defer s.Close()
	if err := s.SetConfig("test", &controlplane.Config{Services: []controlplane.Service{{Name: "trading.shop", LB: "least_request"}}}); err != nil {
		t.Fatal(err)
	}
	eps := []controlplane.Endpoint{
		{Service: "trading.shop", Address: "10.244.0.1:8443"},
		{Service: "trading.shop", Address: "10.244.0.2:8443", Health: controlplane.HealthDraining},
		{Service: "accounts.shop", Address: "10.244.0.3:8443", Health: controlplane.HealthUnhealthy},
	}
	err := s.SetSource("kubernetes", []controlplane.Service{{Name: "trading.shop", LB: "ring_hash"}, {Name: "accounts.shop", LB: "ring_hash"}}, eps)
	if err != nil {
		t.Fatal(err)
	}
	sn := s.Snapshot()
	lb := map[string]clusterpb.Cluster_LbPolicy{}
	for _, c := range sn.Clusters {
		lb[c.Name] = c.LbPolicy
	}
	want := map[string]clusterpb.Cluster_LbPolicy{"trading.shop": clusterpb.Cluster_LEAST_REQUEST, "accounts.shop": clusterpb.Cluster_RING_HASH}
	if diff := cmpDiff(want, lb); diff != "" {
		t.Errorf("cluster policies (-want +got):\n%s", diff)
	}
	health := map[string]corepb.HealthStatus{}
	for _, cla := range sn.Endpoints {
		for _, loc := range cla.Endpoints {
			for _, e := range loc.LbEndpoints {
				health[e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress()] = e.HealthStatus
			}
		}
	}
	wantHealth := map[string]corepb.HealthStatus{"10.244.0.1": corepb.HealthStatus_HEALTHY, "10.244.0.2": corepb.HealthStatus_DRAINING, "10.244.0.3": corepb.HealthStatus_UNHEALTHY}
	if diff := cmpDiff(wantHealth, health); diff != "" {
		t.Errorf("endpoint health (-want +got):\n%s", diff)
	}
	// Not-serving endpoints keep their server-side listeners.
	names := map[string]bool{}
	for _, l := range sn.Listeners {
		names[l.Name] = true
	}
	for _, a := range []string{"10.244.0.1:8443", "10.244.0.2:8443", "10.244.0.3:8443"} {
		if !names[controlplane.ServerListenerName("", a)] {
			t.Errorf("no server-side listener for %s", a)
		}
	}

	version := s.Version()
	err = s.SetSource("kubernetes", []controlplane.Service{{Name: "trading.shop", LB: "fastest"}}, nil)
	want0 := `controlplane: kubernetes refused: services[0].lb: "fastest" is not a load-balancing policy; use round_robin, least_request or ring_hash`
	if err == nil || err.Error() != want0 {
		t.Errorf("bad source services: %v, want %s", err, want0)
	}
	err = s.SetSource("kubernetes", []controlplane.Service{{Name: "trading.shop", Endpoints: []string{"10.0.0.1:1"}}}, nil)
	if err == nil || !strings.Contains(err.Error(), "services[0].endpoints: a source's services list no endpoints of their own") {
		t.Errorf("source service with endpoints: %v", err)
	}
	if s.Version() != version {
		t.Error("a refused source update changed the snapshot")
	}
}
