package httpxds_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/controlplane/registration"
	"github.com/gridmesh/gridmesh/internal/httpxds"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestWatchFollowsClusterAndEndpoints(t *testing.T) {
	m := xdstest.StartMeshd(t, "", &controlplane.Config{MTLS: true, Services: []controlplane.Service{{Name: "trading", LB: "least_request"}}})
	xdstest.Register(t, m, registration.Registration{Service: "trading", Address: "127.0.0.1:1001", SPIFFEID: "spiffe://example.org/trading"})
	xdstest.Register(t, m, registration.Registration{Service: "trading", Address: "127.0.0.1:1002", SPIFFEID: "spiffe://example.org/trading", Weight: 3})

	updates := make(chan httpxds.Update, 16)
	w, err := httpxds.Start(httpxds.Config{ServerURI: m.Addr, NodeID: "test", Cluster: "trading"}, func(u httpxds.Update) { updates <- u })
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
	want := httpxds.Update{
		Endpoints: []httpxds.Endpoint{{Addr: "127.0.0.1:1001", Weight: 1}, {Addr: "127.0.0.1:1002", Weight: 3}},
		Policy:    "least_request",
		IDs:       []spiffeid.ID{spiffeid.RequireFromString("spiffe://example.org/trading")},
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b spiffeid.ID) bool { return a == b })); diff != "" {
		t.Errorf("first update (-want +got):\n%s", diff)
	}
	if err := registration.NewClient(m.HTTPAddr).Deregister(ctx, "trading", "127.0.0.1:1001"); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case u := <-updates:
			if len(u.Endpoints) == 1 && u.Endpoints[0].Addr == "127.0.0.1:1002" {
				return
			}
		case <-ctx.Done():
			t.Fatalf("no update without the deregistered endpoint; last %+v", w.Last())
		}
	}
}

func TestWaitNamesTheControlPlaneWhenUnreachable(t *testing.T) {
	w, err := httpxds.Start(httpxds.Config{ServerURI: "127.0.0.1:1", Cluster: "trading"}, nil)
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
