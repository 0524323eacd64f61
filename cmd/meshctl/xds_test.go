package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/internal/admin"
	"github.com/gridmesh/gridmesh/internal/meshtel"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
	"github.com/gridmesh/gridmesh/mesh"
)

// TestCommandsInXDSMode: for a server and a client configured by meshd,
// `config` lists every resource their xDS clients hold with its status, and
// `endpoints` what meshd sent for the target, beside where calls went.
func TestCommandsInXDSMode(t *testing.T) {
	cfg, err := controlplane.ParseConfig("meshd.yaml", []byte(`mtls: true
services:
  - name: trading
    timeout: 5s
    retry: {on: [unavailable], attempts: 3}
    circuit_breaker: {max_requests: 100}
    outlier_detection: {interval: 10s}
    authorization:
      - name: gateway-only
        sources: [spiffe://example.org/gateway]
    versions: [{name: v1}, {name: v2}]
    routes:
      - name: canary
        match: {prefix: /, headers: [{name: x-canary, present: true}]}
        split: [{version: v1, weight: 90}, {version: v2, weight: 10}]
      - name: chaos
        match: {prefix: /, headers: [{name: x-chaos, exact: "on"}]}
        fault: {abort: {code: UNAVAILABLE, percent: 50}}
`))
	if err != nil {
		t.Fatal(err)
	}
	meshd := xdstest.StartMeshd(t, "", cfg)
	source := devSources(t)
	adm, err := mesh.NewAdmin(freeAddr(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { adm.Close() })
	srv, err := mesh.NewServer(mesh.WithIdentity(source("/trading")), mesh.WithAdmin(adm),
		mesh.WithControlPlane(meshd.Addr), mesh.WithInsecurePlaintextControlPlaneForLocalDebugging(), mesh.WithXDSService("trading", ""))
	if err != nil {
		t.Fatal(err)
	}
	testgrpc.RegisterTestServiceServer(srv, echo{})
	lis, err := newListener()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() { cancel(); srv.Close(); <-done })
	cc, err := mesh.Dial(ctx, "xds:///trading", mesh.WithIdentity(source("/gateway")),
		mesh.WithControlPlane(meshd.Addr), mesh.WithInsecurePlaintextControlPlaneForLocalDebugging(), mesh.WithAdmin(adm))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := testgrpc.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatal(err)
	}

	// Wait for both xDS clients' resources (the server's listener; the
	// client's listener, routes, and three clusters with their endpoints),
	// and note the versions to mask them (they hash the config, ports
	// included).
	var versions []string
	for {
		var out bytes.Buffer
		if err := run(ctx, []string{"-admin", adm.Addr(), "-o", "json", "config"}, &out, &out); err != nil {
			t.Fatal(err)
		}
		var cv admin.ConfigView
		if err := json.Unmarshal(out.Bytes(), &cv); err != nil {
			t.Fatal(err)
		}
		versions = versions[:0]
		for _, u := range cv.Updates {
			if u.Status == "ACKED" {
				versions = append(versions, u.Version)
			}
		}
		if len(versions) == 9 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("config shows %d resources accepted, want 9:\n%s", len(versions), out.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	addr := lis.Addr().String()
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"config_xds", []string{"config"}},
		{"endpoints_xds", []string{"endpoints", "xds:///trading"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if err := run(ctx, append([]string{"-admin", adm.Addr()}, tc.args...), &out, &errOut); err != nil {
				t.Fatalf("meshctl %v: %v\n%s", tc.args, err, errOut.String())
			}
			got := out.String()
			for _, v := range versions {
				got = strings.ReplaceAll(got, " "+v+" ", " VERSION ")
			}
			checkGolden(t, tc.name, mask(got, addr), out.String())
		})
	}

	// explain shows the xDS updates the target's calls were routed by,
	// however many calls came after.
	var out bytes.Buffer
	if err := run(ctx, []string{"-admin", adm.Addr(), "-o", "json", "explain", "xds:///trading"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	var ex Explanation
	if err := json.Unmarshal(out.Bytes(), &ex); err != nil {
		t.Fatalf("explain -o json: %v\n%s", err, out.String())
	}
	types := map[string]bool{}
	for _, e := range ex.Changes {
		if e.Kind == meshtel.EventXDS && e.Code == "ok" {
			types[typeName(e.Resource)] = true
		}
	}
	want := map[string]bool{"Listener": true, "RouteConfiguration": true, "Cluster": true, "ClusterLoadAssignment": true}
	if diff := cmp.Diff(want, types); diff != "" {
		t.Errorf("explain's changes by xDS type (-want +got):\n%s", diff)
	}
}
