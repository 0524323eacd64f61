package mesh_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gridmesh/gridmesh/controlplane"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
	"github.com/gridmesh/gridmesh/mesh"
)

// TestWithControlPlaneRefusesBadLists: every constructor that takes
// WithControlPlane refuses an empty list, an address given twice and,
// among several, one that is not host:port, naming the address.
func TestWithControlPlaneRefusesBadLists(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca := newDevCA(t, time.Hour)
	src := devSource(t, ca, "/gateway")
	tests := []struct {
		name    string
		addrs   []string
		wantErr string
	}{
		{"none", nil, "mesh: WithControlPlane: xdsbootstrap: no control plane address; name one, like 127.0.0.1:15010"},
		{"twice", []string{"127.0.0.1:15010", "127.0.0.1:15010"}, `mesh: WithControlPlane: xdsbootstrap: control plane address "127.0.0.1:15010" is given twice; name each replica once`},
		{"DNS target among several", []string{"127.0.0.1:15010", "dns:///meshd:15010"}, `mesh: WithControlPlane: xdsbootstrap: control plane address 2 of 2, "dns:///meshd:15010": address dns:///meshd:15010: too many colons in address; with several replicas each is host:port (for one DNS name with a record per replica, pass only dns:///meshd:15010)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errText := func(err error) string {
				if err == nil {
					return ""
				}
				return err.Error()
			}
			cc, err := mesh.Dial(ctx, "xds:///trading", mesh.WithIdentity(src), mesh.WithControlPlane(tt.addrs...))
			if err == nil {
				cc.Close()
			}
			if d := cmp.Diff(tt.wantErr, errText(err)); d != "" {
				t.Errorf("Dial (-want +got):\n%s", d)
			}
			_, err = mesh.NewServer(mesh.WithIdentity(src), mesh.WithControlPlane(tt.addrs...), mesh.WithXDSService("trading", ""))
			if d := cmp.Diff(tt.wantErr, errText(err)); d != "" {
				t.Errorf("NewServer (-want +got):\n%s", d)
			}
			hc, err := mesh.HTTPClient(mesh.WithIdentity(src), mesh.WithControlPlane(tt.addrs...))
			if err == nil {
				hc.CloseIdleConnections()
			}
			if d := cmp.Diff(tt.wantErr, errText(err)); d != "" {
				t.Errorf("HTTPClient (-want +got):\n%s", d)
			}
		})
	}
}

// TestServerWarnsWhenReplicasKeepRegistrationsInMemory: a server naming
// two meshd replicas that keep registrations in memory (no Consul) says
// loudly that the other replicas do not know it, once.
func TestServerWarnsWhenReplicasKeepRegistrationsInMemory(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ca := newDevCA(t, time.Hour)
	a := xdstest.StartMeshd(t, "", nil, controlplane.WithMTLS(controlplane.MTLSConfig{Source: devSource(t, ca, "/meshd")}))
	b := xdstest.StartMeshd(t, "", nil, controlplane.WithMTLS(controlplane.MTLSConfig{Source: devSource(t, ca, "/meshd")}))
	var logs lockedBuffer
	srv, err := mesh.NewServer(mesh.WithIdentity(devSource(t, ca, "/trading")),
		mesh.WithControlPlane(a.Addr, b.Addr), mesh.WithXDSService("trading", ""),
		mesh.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	lis := listen(t)
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, lis) }()
	defer func() { stop(); srv.Close(); <-served }()
	const warning = "meshd keeps registrations in its memory, but this server names several control-plane replicas"
	xdstest.WaitFor(ctx, t, "the server warns", func() error {
		if n := strings.Count(logs.String(), warning); n != 1 {
			return fmt.Errorf("warning logged %d times; log:\n%s", n, logs.String())
		}
		return nil
	})
	if a.Stats().Registered+b.Stats().Registered != 1 {
		t.Errorf("registered on a %d, b %d; want on one replica only", a.Stats().Registered, b.Stats().Registered)
	}
}
