package controlplane_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/controlplane/registration"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
)

// splitWeights returns the weights of the first route of service s in
// snap, by cluster.
func splitWeights(snap *controlplane.Snapshot, s string) map[string]uint32 {
	for _, rc := range snap.Routes {
		if rc.GetName() != s {
			continue
		}
		out := map[string]uint32{}
		for _, c := range rc.GetVirtualHosts()[0].GetRoutes()[0].GetRoute().GetWeightedClusters().GetClusters() {
			out[c.GetName()] = c.GetWeight().GetValue()
		}
		return out
	}
	return nil
}

// TestSplitWeightsAreRelative: split weights are relative (a leg gets
// weight/total), so 9:1 and 1:1:1 are accepted and sent to grpc-go as
// written; a leg may be 0 (paused); the total must be 1 to 4294967295,
// from a file and from code alike.
func TestSplitWeightsAreRelative(t *testing.T) {
	const head = "services:\n  - name: a\n    versions: [{name: v1}, {name: v2}, {name: v3}]\n    routes:\n      - split: "
	tests := []struct {
		name    string
		split   []controlplane.WeightedVersion
		want    map[string]uint32 // weights sent, or nil for a refusal
		wantErr string
	}{
		{"percentages", []controlplane.WeightedVersion{{"v1", 90}, {"v2", 10}}, map[string]uint32{"a/v1": 90, "a/v2": 10}, ""},
		{"not summing to 100", []controlplane.WeightedVersion{{"v1", 9}, {"v2", 1}}, map[string]uint32{"a/v1": 9, "a/v2": 1}, ""},
		{"thirds", []controlplane.WeightedVersion{{"v1", 1}, {"v2", 1}, {"v3", 1}}, map[string]uint32{"a/v1": 1, "a/v2": 1, "a/v3": 1}, ""},
		{"a paused leg", []controlplane.WeightedVersion{{"v1", 1}, {"v2", 0}}, map[string]uint32{"a/v1": 1, "a/v2": 0}, ""},
		{"the largest total", []controlplane.WeightedVersion{{"v1", 4294967294}, {"v2", 1}}, map[string]uint32{"a/v1": 4294967294, "a/v2": 1}, ""},
		{"one leg", []controlplane.WeightedVersion{{"v2", 7}}, map[string]uint32{"a/v2": 7}, ""},
		{"all zero", []controlplane.WeightedVersion{{"v1", 0}, {"v2", 0}}, nil,
			"line 5: services[0].routes[0].split: the weights add up to 0, so no call would be routed; give at least one version a weight above 0 (weights are relative: 9 and 1 split calls 90%/10%)"},
		{"one zero leg", []controlplane.WeightedVersion{{"v1", 0}}, nil, "services[0].routes[0].split: the weights add up to 0"},
		{"total over uint32", []controlplane.WeightedVersion{{"v1", 4294967295}, {"v2", 1}}, nil,
			"line 5: services[0].routes[0].split: the weights add up to 4294967296, over grpc-go's limit of 4294967295; use smaller numbers (weights are relative: 9 and 1 split calls like 90 and 10)"},
		{"total far over uint32", []controlplane.WeightedVersion{{"v1", 4294967295}, {"v2", 4294967295}, {"v3", 4294967295}}, nil,
			"the weights add up to 12884901885, over grpc-go's limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var legs []string
			for _, l := range tt.split {
				legs = append(legs, fmt.Sprintf("{version: %s, weight: %d}", l.Version, l.Weight))
			}
			yaml := head + "[" + strings.Join(legs, ", ") + "]\n"
			fromFile, err := controlplane.ParseConfig("meshd.yaml", []byte(yaml))
			// The same config built in code goes through the same rule.
			s := controlplane.NewServer()
			defer s.Close()
			fromCode := &controlplane.Config{Services: []controlplane.Service{{
				Name:     "a",
				Versions: []controlplane.Version{{Name: "v1"}, {Name: "v2"}, {Name: "v3"}},
				Routes:   []controlplane.Route{{Split: tt.split}},
			}}}
			codeErr := s.SetConfig("code", fromCode)
			if tt.want == nil {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("ParseConfig: %v, want an error with %q", err, tt.wantErr)
				}
				if codeErr == nil || !strings.Contains(codeErr.Error(), strings.TrimPrefix(tt.wantErr, "line 5: ")) {
					t.Errorf("SetConfig: %v, want an error with %q", codeErr, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseConfig: %v", err)
			}
			if codeErr != nil {
				t.Fatalf("SetConfig: %v", codeErr)
			}
			if diff := cmp.Diff(fromCode, fromFile); diff != "" {
				t.Errorf("file and code differ (-code +file):\n%s", diff)
			}
			if diff := cmp.Diff(tt.want, splitWeights(s.Snapshot(), "a")); diff != "" {
				t.Errorf("weights sent (-want +got):\n%s", diff)
			}
		})
	}
}

// TestEndpointWeightsFitGRPC: registered endpoint weights are relative and
// may add up to at most 4294967295 per service (grpc-go's limit for a
// locality, which would NACK the service's endpoints); a registration that
// would pass it is refused and the endpoints in force stay.
func TestEndpointWeightsFitGRPC(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := xdstest.StartMeshd(t, "", nil)
	c := registration.NewClient(m.HTTPAddr)
	if err := c.Register(ctx, registration.Registration{Service: "a", Address: "127.0.0.1:9000", Weight: 4294967294}); err != nil {
		t.Fatal(err)
	}
	if err := c.Register(ctx, registration.Registration{Service: "a", Address: "127.0.0.1:9001"}); err != nil {
		t.Fatal(err) // 4294967294 + the default 1: at the limit
	}
	version := m.Version()
	err := c.Register(ctx, registration.Registration{Service: "a", Address: "127.0.0.1:9002", Weight: 1})
	var re *registration.Error
	want := `controlplane: the endpoints of service "a" weigh 4294967296 together, over grpc-go's limit of 4294967295; lower the weights (they are relative: 2 and 1 send twice the calls to the first)`
	if !errors.As(err, &re) || re.Status != 409 || re.Message != want {
		t.Errorf("Register over the limit: %v, want 409 %q", err, want)
	}
	if got := m.Version(); got != version {
		t.Errorf("version %s after a refused registration, want %s", got, version)
	}
	// Another service has its own total.
	if err := c.Register(ctx, registration.Registration{Service: "b", Address: "127.0.0.1:9003", Weight: 4294967295}); err != nil {
		t.Error(err)
	}
	_, err = controlplane.BuildSnapshot(nil, []controlplane.Endpoint{
		{Service: "a", Address: "127.0.0.1:1", Weight: 1 << 31}, {Service: "a", Address: "127.0.0.1:2", Weight: 1 << 31},
	})
	if err == nil || !strings.Contains(err.Error(), `service "a" weigh 4294967296 together`) {
		t.Errorf("BuildSnapshot over the limit: %v", err)
	}
}
