package xdsstatus_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	adminpb "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	statuspb "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
	"github.com/gridmesh/gridmesh/internal/xdsbootstrap"
	"github.com/gridmesh/gridmesh/internal/xdsstatus"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const nodeID = "xdsstatus-test"

func edsCluster(t *testing.T, name string) *clusterpb.Cluster {
	_, _, c, _ := xdstest.ClientResources(t, name, "127.0.0.1:1")
	return c
}

// updates collects what the Recorder reports.
type updates struct {
	mu  sync.Mutex
	all []xdsstatus.Update
}

func (u *updates) add(x xdsstatus.Update) { u.mu.Lock(); u.all = append(u.all, x); u.mu.Unlock() }

func (u *updates) list() []xdsstatus.Update {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]xdsstatus.Update{}, u.all...)
}

// dial opens an xds:/// channel through grpc-go's own xDS client, with the
// bootstrap naming rec.
func dial(t *testing.T, cp *xdstest.SnapshotServer, target string, rec *xdsstatus.Recorder) *grpc.ClientConn {
	t.Helper()
	rb, err := xdsbootstrap.NewResolverBuilder(xdsbootstrap.Config{ServerURI: cp.Addr, NodeID: nodeID, Recorder: rec, InsecurePlaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(target, grpc.WithResolvers(rb), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	cc.Connect() // starts name resolution, hence the xDS watches
	return cc
}

// status is the part of a GenericXdsConfig a test compares.
type status struct {
	Type, Name, Version, Status, FailedVersion string
}

func statuses(cc *statuspb.ClientConfig) []status {
	var out []status
	for _, g := range cc.GetGenericXdsConfigs() {
		out = append(out, status{
			Type: g.GetTypeUrl()[strings.LastIndex(g.GetTypeUrl(), ".")+1:], Name: g.GetName(),
			Version: g.GetVersionInfo(), Status: g.GetClientStatus().String(), FailedVersion: g.GetErrorState().GetVersionInfo(),
		})
	}
	return out
}

func waitFor(ctx context.Context, t *testing.T, what string, cond func() error) {
	t.Helper()
	for {
		err := cond()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %v", what, err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func TestRecordsWhatGRPCXDSClientAcceptsAndRefuses(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cp := xdstest.StartSnapshotServer(t)
	cp.Set(t, "1", "svc", "127.0.0.1:7001", nil)
	var got updates
	rec := xdsstatus.New(got.add)
	defer rec.Close()
	cc := dial(t, cp, "xds:///svc", rec)
	defer cc.Close()

	accepted := []status{
		{Type: "Listener", Name: "svc", Version: "1", Status: "ACKED"},
		{Type: "RouteConfiguration", Name: "svc", Version: "1", Status: "ACKED"},
		{Type: "Cluster", Name: "svc", Version: "1", Status: "ACKED"},
		{Type: "ClusterLoadAssignment", Name: "svc", Version: "1", Status: "ACKED"},
	}
	waitFor(ctx, t, "all four resources ACKed", func() error {
		if diff := cmp.Diff(accepted, statuses(rec.ClientConfig())); diff != "" {
			return errors.New(diff)
		}
		return nil
	})
	if id := rec.ClientConfig().GetNode().GetId(); id != nodeID {
		t.Errorf("node %q, want %q", id, nodeID)
	}
	if diff := cmp.Diff([]xdsstatus.Endpoint{{Cluster: "svc", Address: "127.0.0.1:7001", Weight: 1, Health: "healthy"}}, rec.Endpoints()); diff != "" {
		t.Errorf("Endpoints (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]xdsstatus.Cluster{{Name: "svc", Balancer: "round_robin", MaxRequests: 1024}}, rec.Clusters()); diff != "" {
		t.Errorf("Clusters (-want +got):\n%s", diff)
	}

	// Version 2 carries a cluster grpc-go refuses (a STATIC cluster) and
	// new endpoints, which it accepts.
	bad := edsCluster(t, "svc")
	bad.ClusterDiscoveryType = &clusterpb.Cluster_Type{Type: clusterpb.Cluster_STATIC}
	cp.Set(t, "2", "svc", "127.0.0.1:7002", bad)
	want := []status{
		{Type: "Listener", Name: "svc", Version: "2", Status: "ACKED"},
		{Type: "RouteConfiguration", Name: "svc", Version: "2", Status: "ACKED"},
		{Type: "Cluster", Name: "svc", Version: "1", Status: "NACKED", FailedVersion: "2"},
		{Type: "ClusterLoadAssignment", Name: "svc", Version: "2", Status: "ACKED"},
	}
	waitFor(ctx, t, "cluster NACKed, endpoints ACKed", func() error {
		if diff := cmp.Diff(want, statuses(rec.ClientConfig())); diff != "" {
			return errors.New(diff)
		}
		return nil
	})
	for _, g := range rec.ClientConfig().GetGenericXdsConfigs() {
		if g.GetClientStatus() != adminpb.ClientResourceStatus_NACKED {
			continue
		}
		if d := g.GetErrorState().GetDetails(); !strings.Contains(d, `resource "svc"`) {
			t.Errorf("NACK details %q do not carry grpc-go's reason", d)
		}
		// The resource in force is still version 1's EDS cluster.
		c := &clusterpb.Cluster{}
		if err := g.GetXdsConfig().UnmarshalTo(c); err != nil || c.GetType() != clusterpb.Cluster_EDS {
			t.Errorf("config in force %v (%v), want version 1's EDS cluster", c, err)
		}
		if c := (&clusterpb.Cluster{}); g.GetErrorState().GetFailedConfiguration().UnmarshalTo(c) != nil || c.GetType() != clusterpb.Cluster_STATIC {
			t.Errorf("failed configuration %v, want the STATIC cluster", c)
		}
	}
	var nacks int
	for _, u := range got.list() {
		if u.NACK {
			nacks++
			if u.TypeURL != xdsstatus.ClusterType || len(u.Rejected) != 1 || u.Rejected[0] != "svc" || u.Version != "2" {
				t.Errorf("NACK update %+v, want the cluster svc at version 2", u)
			}
		}
	}
	if nacks == 0 {
		t.Error("no NACK reported to onUpdate")
	}
}

func TestMissingListenerDoesNotExist(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cp := xdstest.StartSnapshotServer(t)
	cp.Set(t, "1", "svc", "127.0.0.1:7001", nil)
	rec := xdsstatus.New(nil)
	defer rec.Close()
	cc := dial(t, cp, "xds:///nosuch", rec)
	defer cc.Close()
	waitFor(ctx, t, "listener nosuch reported", func() error {
		st := statuses(rec.ClientConfig())
		if diff := cmp.Diff([]status{{Type: "Listener", Name: "nosuch", Status: "DOES_NOT_EXIST"}}, st); diff != "" {
			return errors.New(diff)
		}
		return nil
	})
}

func TestClosedRecorderIsNotFound(t *testing.T) {
	rec := xdsstatus.New(nil)
	typ, cfg := rec.ChannelCreds()
	rec.Close()
	rec.Close()
	if typ != xdsstatus.CredentialsType || !strings.Contains(string(cfg), "recorder") {
		t.Errorf("ChannelCreds %s %s", typ, cfg)
	}
	// A bootstrap naming a closed recorder still parses and connects in
	// plaintext.
	if _, err := xdsbootstrap.NewResolverBuilder(xdsbootstrap.Config{ServerURI: "127.0.0.1:1", Recorder: rec, InsecurePlaintext: true}); err != nil {
		t.Fatal(err)
	}
}
