package controlplane_test

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/internal/testutil/consul"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
)

func TestConsulCatalogFeedsEndpoints(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	agent := consul.Start(t)
	m := xdstest.StartMeshd(t, "", twoVersions(controlplane.Route{Version: "v2"}))
	src := controlplane.NewConsulSource(agent.Client(), m.Server)
	runCtx, stop := context.WithCancel(ctx)
	runDone := make(chan struct{})
	go func() { defer close(runDone); _ = src.Run(runCtx) }()
	defer func() { stop(); <-runDone }()

	b1 := xdstest.StartBackend(t, m, xdstest.BackendOptions{Name: "v1", Service: "trading", NoRegister: true})
	b2 := xdstest.StartBackend(t, m, xdstest.BackendOptions{Name: "v2", Service: "trading", NoRegister: true})
	for _, b := range []*xdstest.Backend{b1, b2} {
		host, port, _ := net.SplitHostPort(b.Addr)
		p, _ := strconv.Atoi(port)
		err := agent.Client().Agent().ServiceRegister(&api.AgentServiceRegistration{
			ID: b.Name, Name: "trading", Address: host, Port: p,
			Meta: map[string]string{"version": b.Name},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	c := xdstest.Dial(t, m.Addr, "trading", nil)
	waitServedBy(ctx, t, c, "v2")

	// Deregistering v2 in Consul takes it out of the mesh.
	if err := agent.Client().Agent().ServiceDeregister("v2"); err != nil {
		t.Fatal(err)
	}
	xdstest.WaitFor(ctx, t, "v2 gone from the snapshot", func() error {
		for _, cla := range m.Snapshot().Endpoints {
			if cla.GetClusterName() == "trading/v2" && len(cla.GetEndpoints()) == 0 {
				return nil
			}
		}
		return xdstest.ErrNotYet
	})
}
