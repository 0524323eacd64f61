package controlplane_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	"github.com/gridmesh/gridmesh/controlplane"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
)

// call makes one UnaryCall and returns the serving backend's name.
func call(ctx context.Context, c testgrpc.TestServiceClient, opts ...grpc.CallOption) (string, error) {
	resp, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{}, opts...)
	if err != nil {
		return "", err
	}
	return resp.GetServerId(), nil
}

// waitServedBy polls until a call lands on want.
func waitServedBy(ctx context.Context, t *testing.T, c testgrpc.TestServiceClient, want string) {
	t.Helper()
	xdstest.WaitFor(ctx, t, "call reaches "+want, func() error {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		got, err := call(cctx, c)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("served by %q", got)
		}
		return nil
	})
}

func twoVersions(routes ...controlplane.Route) *controlplane.Config {
	return &controlplane.Config{Services: []controlplane.Service{{
		Name:     "trading",
		Versions: []controlplane.Version{{Name: "v1"}, {Name: "v2"}},
		Routes:   routes,
	}}}
}

func TestHeaderRouteSendsMatchingCallsToV2Only(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ca := newMeshCA(t)
	m := xdstest.StartMeshd(t, "", withMTLS(twoVersions(
		controlplane.Route{Name: "canary", Match: controlplane.Match{Headers: []controlplane.HeaderMatch{{Name: "x-canary", Exact: "true"}}}, Version: "v2"},
		controlplane.Route{Name: "stable", Version: "v1"},
	)))
	meshBackend(t, m, ca, xdstest.BackendOptions{Name: "v1", Service: "trading", Version: "v1"})
	meshBackend(t, m, ca, xdstest.BackendOptions{Name: "v2", Service: "trading", Version: "v2"})
	c := meshCaller(t, m.Addr, "trading", ca)
	waitServedBy(ctx, t, c, "v1")

	canary := metadata.AppendToOutgoingContext(ctx, "x-canary", "true")
	other := metadata.AppendToOutgoingContext(ctx, "x-canary", "false")
	got := map[string]map[string]int{"canary": {}, "other": {}, "none": {}}
	for range 200 {
		for name, cctx := range map[string]context.Context{"canary": canary, "other": other, "none": ctx} {
			id, err := call(cctx, c)
			if err != nil {
				t.Fatalf("%s call: %v", name, err)
			}
			got[name][id]++
		}
	}
	want := map[string]map[string]int{"canary": {"v2": 200}, "other": {"v1": 200}, "none": {"v1": 200}}
	if diff := cmpDiff(want, got); diff != "" {
		t.Errorf("calls per backend (-want +got):\n%s", diff)
	}
}

func TestWeightedSplit90To10(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ca := newMeshCA(t)
	m := xdstest.StartMeshd(t, "", withMTLS(twoVersions(controlplane.Route{
		Name:  "canary",
		Split: []controlplane.WeightedVersion{{Version: "v1", Weight: 90}, {Version: "v2", Weight: 10}},
	})))
	meshBackend(t, m, ca, xdstest.BackendOptions{Name: "v1", Service: "trading", Version: "v1"})
	meshBackend(t, m, ca, xdstest.BackendOptions{Name: "v2", Service: "trading", Version: "v2"})
	c := meshCaller(t, m.Addr, "trading", ca)
	// Both clusters must be up before counting.
	waitServedBy(ctx, t, c, "v2")

	const n = 2000
	counts := map[string]int{}
	for range n {
		id, err := call(ctx, c)
		if err != nil {
			t.Fatalf("call: %v", err)
		}
		counts[id]++
	}
	share := 100 * float64(counts["v2"]) / n
	t.Logf("v1=%d v2=%d: v2 share %.1f%%", counts["v1"], counts["v2"], share)
	if share < 7 || share > 13 {
		t.Errorf("v2 got %.1f%% of %d calls, want 10%% ± 3", share, n)
	}
	if counts["v1"]+counts["v2"] != n {
		t.Errorf("calls landed elsewhere: %v", counts)
	}
}
