package controlplane_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/gridmesh/gridmesh/controlplane"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestNACKIsLoggedAndNotResentInALoop: go-control-plane alone would answer
// a NACK with the same refused resources at once, forever. meshd logs the
// NACK with the client's reason, counts it, and sends the next snapshot.
func TestNACKIsLoggedAndNotResentInALoop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var logs lockedBuffer
	m := xdstest.StartMeshd(t, "", nil, controlplane.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err := m.SetEndpoints("test", []controlplane.Endpoint{{Service: "trading", Address: "127.0.0.1:7000"}}); err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(m.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	stream, err := discoverypb.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(sctx)
	if err != nil {
		t.Fatal(err)
	}
	req := &discoverypb.DiscoveryRequest{Node: &corepb.Node{Id: "nack-test"}, TypeUrl: resourcev3.ClusterType, ResourceNames: []string{"trading"}}
	if err := stream.Send(req); err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoverypb.DiscoveryRequest{
		TypeUrl: resourcev3.ClusterType, ResourceNames: []string{"trading"},
		ResponseNonce: first.GetNonce(),
		ErrorDetail:   &status.Status{Code: 3, Message: "cluster trading: unsupported thing"},
	}); err != nil {
		t.Fatal(err)
	}

	// The next response must carry a new snapshot, not the refused one.
	got := make(chan *discoverypb.DiscoveryResponse, 1)
	go func() {
		resp, err := stream.Recv()
		if err == nil {
			got <- resp
		}
		close(got)
	}()
	xdstest.WaitFor(ctx, t, "NACK counted", func() error {
		if m.Stats().NACKs != 1 {
			return xdstest.ErrNotYet
		}
		return nil
	})
	select {
	case resp := <-got:
		t.Fatalf("refused version %s re-sent right after the NACK (got %s)", first.GetVersionInfo(), resp.GetVersionInfo())
	case <-time.After(300 * time.Millisecond): // a loop would answer within microseconds
	}
	if err := m.SetEndpoints("test", []controlplane.Endpoint{{Service: "trading", Address: "127.0.0.1:7001"}}); err != nil {
		t.Fatal(err)
	}
	// Endpoints changed but clusters did not: change a cluster.
	if err := m.SetConfig("test", &controlplane.Config{Services: []controlplane.Service{{Name: "trading", LB: "least_request"}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case resp := <-got:
		if resp == nil || resp.GetVersionInfo() == first.GetVersionInfo() {
			t.Fatalf("after a new snapshot got %v, want a new cluster version", resp)
		}
	case <-ctx.Done():
		t.Fatal("no response after a new snapshot")
	}
	for _, want := range []string{"client refused config (NACK)", "node=nack-test", "resources=[trading]", `reason="cluster trading: unsupported thing"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
	scancel()
}

// TestNACKGuardHoldsWhenAnotherStreamOfTheNodeCloses: two streams may share
// a node ID (two channels in one process, a restarted client whose old
// stream has not timed out yet). The guard once kept the last version sent
// per node ID and forgot it when any stream of that node closed, so a NACK
// on the surviving stream was answered with the refused version at once,
// again and again.
func TestNACKGuardHoldsWhenAnotherStreamOfTheNodeCloses(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := xdstest.StartMeshd(t, "", nil)
	if err := m.SetEndpoints("test", []controlplane.Endpoint{{Service: "trading", Address: "127.0.0.1:7000"}}); err != nil {
		t.Fatal(err)
	}
	open := func(ctx context.Context) (discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesClient, *discoverypb.DiscoveryResponse) {
		t.Helper()
		cc, err := grpc.NewClient(m.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		stream, err := discoverypb.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&discoverypb.DiscoveryRequest{Node: &corepb.Node{Id: "shared"}, TypeUrl: resourcev3.ClusterType, ResourceNames: []string{"trading"}}); err != nil {
			t.Fatal(err)
		}
		first, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return stream, first
	}
	actx, acancel := context.WithCancel(ctx)
	defer acancel()
	_, _ = open(actx)
	bctx, bcancel := context.WithCancel(ctx)
	defer bcancel()
	b, first := open(bctx)
	acancel()
	xdstest.WaitFor(ctx, t, "first stream closed", func() error {
		if m.Stats().Clients != 1 {
			return xdstest.ErrNotYet
		}
		return nil
	})

	if err := b.Send(&discoverypb.DiscoveryRequest{
		TypeUrl: resourcev3.ClusterType, ResourceNames: []string{"trading"},
		ResponseNonce: first.GetNonce(),
		ErrorDetail:   &status.Status{Code: 3, Message: "cluster trading: unsupported thing"},
	}); err != nil {
		t.Fatal(err)
	}
	got := make(chan *discoverypb.DiscoveryResponse, 1)
	go func() {
		defer close(got)
		if resp, err := b.Recv(); err == nil {
			got <- resp
		}
	}()
	xdstest.WaitFor(ctx, t, "NACK counted", func() error {
		if m.Stats().NACKs != 1 {
			return xdstest.ErrNotYet
		}
		return nil
	})
	select {
	case resp := <-got:
		t.Fatalf("refused version %s re-sent right after the NACK (got %s)", first.GetVersionInfo(), resp.GetVersionInfo())
	case <-time.After(300 * time.Millisecond): // a loop would answer within microseconds
	}
	bcancel()
	<-got
}
