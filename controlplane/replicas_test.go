package controlplane_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/controlplane/registration"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
)

// TestReplicasBehindOneName runs two meshd replicas over the same inputs
// behind one name: they serve the same version, and when the replica a
// client uses dies, the client moves to the other and keeps converging.
func TestReplicasBehindOneName(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := twoVersions(controlplane.Route{Version: "v1"})
	a := xdstest.StartMeshd(t, "", cfg)
	b := xdstest.StartMeshd(t, "", cfg)
	replicas := []*xdstest.Meshd{a, b}
	register := func(r registration.Registration) {
		for _, m := range replicas {
			xdstest.Register(t, m, r)
		}
	}

	// The name: a resolver scheme listing both replicas, a stand-in for DNS.
	r := manual.NewBuilderWithScheme("meshd-replicas")
	r.InitialState(resolver.State{Addresses: []resolver.Address{{Addr: a.Addr}, {Addr: b.Addr}}})
	resolver.Register(r)
	name := "meshd-replicas:///meshd"

	v1 := xdstest.StartBackend(t, a, xdstest.BackendOptions{Name: "v1", Service: "trading", Version: "v1", NoRegister: true})
	register(registration.Registration{Service: "trading", Version: "v1", Address: v1.Addr})
	if a.Version() != b.Version() {
		t.Fatalf("replicas over the same inputs serve versions %s and %s", a.Version(), b.Version())
	}
	c := xdstest.Dial(t, name, "trading", nil)
	waitServedBy(ctx, t, c, "v1")

	// Kill whichever replica the client uses (pick_first: the first).
	a.Stop()
	replicas = replicas[1:]
	v2 := xdstest.StartBackend(t, b, xdstest.BackendOptions{Name: "v2", Service: "trading", Version: "v2", NoRegister: true})
	register(registration.Registration{Service: "trading", Version: "v2", Address: v2.Addr})
	if err := b.SetConfig("test", twoVersions(controlplane.Route{Version: "v2"})); err != nil {
		t.Fatal(err)
	}
	waitServedBy(ctx, t, c, "v2")
}
