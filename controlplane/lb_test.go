package controlplane_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/gridmesh/gridmesh/controlplane"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
)

func TestLoadBalancingPolicies(t *testing.T) {
	tests := []struct {
		name string
		svc  controlplane.Service
		// sticky: every call with the same x-account lands on one backend.
		sticky bool
	}{
		{"round_robin", controlplane.Service{}, false},
		{"least_request", controlplane.Service{LB: "least_request"}, false},
		{"ring_hash on a header", controlplane.Service{LB: "ring_hash", HashHeader: "x-account"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			ca := newMeshCA(t)
			m := xdstest.StartMeshd(t, "", withMTLS(oneService(tt.svc)))
			for i := range 3 {
				meshBackend(t, m, ca, xdstest.BackendOptions{Name: fmt.Sprintf("b%d", i), Service: "trading"})
			}
			c := meshCaller(t, m.Addr, "trading", ca)
			waitServedBy(ctx, t, c, "b0")

			perAccount := map[string]map[string]int{}
			spread := map[string]int{}
			for i := range 300 {
				account := fmt.Sprintf("acct-%d", i%10)
				id, err := call(metadata.AppendToOutgoingContext(ctx, "x-account", account), c)
				if err != nil {
					t.Fatal(err)
				}
				if perAccount[account] == nil {
					perAccount[account] = map[string]int{}
				}
				perAccount[account][id]++
				spread[id]++
			}
			sticky := true
			for _, backends := range perAccount {
				sticky = sticky && len(backends) == 1
			}
			if sticky != tt.sticky {
				t.Errorf("accounts stuck to one backend: %v, want %v (%v)", sticky, tt.sticky, perAccount)
			}
			if !tt.sticky && len(spread) != 3 {
				t.Errorf("calls reached %d backends, want 3: %v", len(spread), spread)
			}
		})
	}
}
