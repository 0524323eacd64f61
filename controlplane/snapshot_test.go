package controlplane_test

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gridmesh/gridmesh/controlplane"
)

func names(s *controlplane.Snapshot) map[string][]string {
	out := map[string][]string{}
	for _, l := range s.Listeners {
		out["listeners"] = append(out["listeners"], l.GetName())
	}
	for _, r := range s.Routes {
		out["routes"] = append(out["routes"], r.GetName())
	}
	for _, c := range s.Clusters {
		out["clusters"] = append(out["clusters"], c.GetName())
	}
	for _, e := range s.Endpoints {
		out["endpoints"] = append(out["endpoints"], e.GetClusterName())
	}
	return out
}

func TestBuildSnapshotResources(t *testing.T) {
	cfg, err := controlplane.ParseConfig("meshd.yaml", []byte(fullConfig))
	if err != nil {
		t.Fatal(err)
	}
	snap, err := controlplane.BuildSnapshot(cfg, []controlplane.Endpoint{
		{Service: "ledger", Address: "127.0.0.1:7000", ListenAddress: "0.0.0.0:7000", SPIFFEID: "spiffe://rec.test/ledger"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"listeners": {
			"grpc/server/rec.test/ledger?xds.resource.listening_address=0.0.0.0:7000",
			"grpc/server/rec.test/trading?xds.resource.listening_address=10.0.0.1:8443",
			"grpc/server/rec.test/trading?xds.resource.listening_address=10.0.0.2:9000",
			"grpc/server/rec.test/trading?xds.resource.listening_address=10.0.1.1:8443",
			"ledger",
			"trading",
		},
		"routes":    {"ledger", "trading"},
		"clusters":  {"ledger", "trading", "trading/v1", "trading/v2"},
		"endpoints": {"ledger", "trading", "trading/v1", "trading/v2"},
	}
	if diff := cmp.Diff(want, names(snap)); diff != "" {
		t.Errorf("resources (-want +got):\n%s", diff)
	}
}

func TestBuildSnapshotIsDeterministic(t *testing.T) {
	cfg, err := controlplane.ParseConfig("meshd.yaml", []byte(fullConfig))
	if err != nil {
		t.Fatal(err)
	}
	a := controlplane.Endpoint{Service: "ledger", Address: "127.0.0.1:7000"}
	b := controlplane.Endpoint{Service: "ledger", Address: "127.0.0.1:7001"}
	c := controlplane.Endpoint{Service: "trading", Version: "v2", Address: "127.0.0.1:7002", SPIFFEID: "spiffe://rec.test/trading"}
	first, err := controlplane.BuildSnapshot(cfg, []controlplane.Endpoint{a, b, c})
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		// Replicas see the same inputs in any order.
		again, err := controlplane.BuildSnapshot(cfg, []controlplane.Endpoint{c, b, a})
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(first.TypeVersions, again.TypeVersions); diff != "" || again.Version != first.Version {
			t.Fatalf("versions differ between builds of the same inputs (-first +again):\n%s", diff)
		}
	}

	// An endpoint change moves only the endpoint version (and the snapshot's).
	moved, err := controlplane.BuildSnapshot(cfg, []controlplane.Endpoint{a, c})
	if err != nil {
		t.Fatal(err)
	}
	changed := map[string]bool{}
	for typ, v := range first.TypeVersions {
		changed[typ] = moved.TypeVersions[typ] != v
	}
	want := map[string]bool{
		"type.googleapis.com/envoy.config.listener.v3.Listener":              true, // b's server listener went away
		"type.googleapis.com/envoy.config.route.v3.RouteConfiguration":       false,
		"type.googleapis.com/envoy.config.cluster.v3.Cluster":                false,
		"type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment": true,
	}
	if diff := cmp.Diff(want, changed); diff != "" {
		t.Errorf("types whose version changed (-want +got):\n%s", diff)
	}
}

func TestBuildSnapshotRefusesSharedListenAddress(t *testing.T) {
	_, err := controlplane.BuildSnapshot(nil, []controlplane.Endpoint{
		{Service: "a", Address: "127.0.0.1:7000"},
		{Service: "b", Address: "127.0.0.1:7000"},
	})
	if err == nil {
		t.Fatal("two services on one address accepted")
	}
}

// TestBuildSnapshotIsDeterministicWithManyPolicies is the regression test
// for versions that changed from build to build: RBAC policies are a proto
// map packed into an Any, and anypb.New encodes maps in random order.
func TestBuildSnapshotIsDeterministicWithManyPolicies(t *testing.T) {
	cfg := &controlplane.Config{MTLS: true, Services: []controlplane.Service{{Name: "ledger"}}}
	for i := range 8 {
		cfg.Services[0].Authorization = append(cfg.Services[0].Authorization, controlplane.Policy{
			Name: fmt.Sprintf("p%d", i), Sources: []string{fmt.Sprintf("spiffe://rec.test/s%d", i)},
		})
	}
	eps := []controlplane.Endpoint{{Service: "ledger", Address: "127.0.0.1:7000"}}
	first, err := controlplane.BuildSnapshot(cfg, eps)
	if err != nil {
		t.Fatal(err)
	}
	for range 50 {
		again, err := controlplane.BuildSnapshot(cfg, eps)
		if err != nil {
			t.Fatal(err)
		}
		if again.Version != first.Version {
			t.Fatalf("version %s, then %s, for the same inputs", first.Version, again.Version)
		}
	}
}
