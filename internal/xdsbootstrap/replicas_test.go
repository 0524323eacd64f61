package xdsbootstrap_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/gridmesh/gridmesh/internal/xdsbootstrap"
)

func TestReplicasTarget(t *testing.T) {
	tests := []struct {
		name    string
		addrs   []string
		want    string
		wantErr string
	}{
		{"one address as it is", []string{"127.0.0.1:15010"}, "127.0.0.1:15010", ""},
		{"one DNS target as it is", []string{"dns:///meshd:15010"}, "dns:///meshd:15010", ""},
		{"several", []string{"10.0.0.1:15010", "meshd-b:15010"}, "gridmesh-replicas:///10.0.0.1:15010,meshd-b:15010", ""},
		{"none", nil, "", "xdsbootstrap: no control plane address; name one, like 127.0.0.1:15010"},
		{"a target among several", []string{"10.0.0.1:15010", "dns:///meshd:15010"}, "",
			`xdsbootstrap: control plane address 2 of 2, "dns:///meshd:15010": address dns:///meshd:15010: too many colons in address; with several replicas each is host:port (for one DNS name with a record per replica, pass only dns:///meshd:15010)`},
		{"no port", []string{"10.0.0.1:15010", "10.0.0.2"}, "",
			`xdsbootstrap: control plane address 2 of 2, "10.0.0.2": address 10.0.0.2: missing port in address; with several replicas each is host:port (for one DNS name with a record per replica, pass only dns:///meshd:15010)`},
		{"port out of range", []string{"10.0.0.1:0", "10.0.0.2:15010"}, "",
			`xdsbootstrap: control plane address 1 of 2, "10.0.0.1:0": port "0" is not 1-65535; with several replicas each is host:port (for one DNS name with a record per replica, pass only dns:///meshd:15010)`},
		{"twice", []string{"10.0.0.1:15010", "10.0.0.1:15010"}, "",
			`xdsbootstrap: control plane address "10.0.0.1:15010" is given twice; name each replica once`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := xdsbootstrap.ReplicasTarget(tt.addrs)
			gotErr := ""
			if err != nil {
				gotErr = err.Error()
			}
			if d := cmp.Diff(tt.wantErr, gotErr); d != "" {
				t.Errorf("error (-want +got):\n%s", d)
			}
			if got != tt.want {
				t.Errorf("target = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestReplicasTargetFailsOver: a channel to a replicas target reaches a
// replica while another is down, and moves to the one left when the
// replica it uses stops.
func TestReplicasTargetFailsOver(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := func() (string, *grpc.Server) {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s := grpc.NewServer()
		healthpb.RegisterHealthServer(s, health.NewServer())
		go func() { _ = s.Serve(lis) }()
		t.Cleanup(s.Stop)
		return lis.Addr().String(), s
	}
	a, sa := start()
	b, sb := start()
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()

	target, err := xdsbootstrap.ReplicasTarget([]string{deadAddr, a, b})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	// check calls until a call succeeds (one sent as the connection
	// closes fails, as on any channel) and returns the peer's address.
	check := func(what string) string {
		t.Helper()
		for {
			var p peer.Peer
			_, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true), grpc.Peer(&p))
			if err == nil {
				return p.Addr.String()
			}
			if ctx.Err() != nil {
				t.Fatalf("%s: %v", what, err)
			}
		}
	}
	servers := map[string]*grpc.Server{a: sa, b: sb}
	first := check("with one replica down")
	if servers[first] == nil {
		t.Fatalf("call answered by %s, not a live replica", first)
	}
	servers[first].Stop()
	if second := check("with the replica in use stopped"); second == first || servers[second] == nil {
		t.Fatalf("after %s stopped the call was answered by %s, want the other live replica", first, second)
	}
	sa.Stop()
	sb.Stop()
	cctx, ccancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer ccancel()
	if _, err := healthpb.NewHealthClient(cc).Check(cctx, &healthpb.HealthCheckRequest{}); err == nil {
		t.Error("a call succeeded with every replica down")
	}
}
