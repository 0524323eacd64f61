package mesh_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

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
