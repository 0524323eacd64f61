package controlplane

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// TestSnapshotPublishedDuringAPushIsNotLost: a snapshot published while a
// stream's push goroutine is about to look for work must reach the
// stream. The push here was started by a change the stream does not
// subscribe to (clusters), so it finds nothing to send; the endpoint
// change published at that moment finds the goroutine still running and
// leaves the sending to it. A push that had read the snapshot before
// taking the stream's lock ended without sending it, and the client kept
// the old endpoints until some later change.
func TestSnapshotPublishedDuringAPushIsNotLost(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := NewServer(WithInsecurePlaintextForLocalDebugging())
	defer s.Close()
	if err := s.SetEndpoints("test", []Endpoint{{Service: "trading", Address: "10.0.0.1:8443"}}); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = s.Serve(lis) }()
	defer func() { s.Close(); <-served }()

	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	stream, err := discoverypb.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoverypb.DiscoveryRequest{Node: &corepb.Node{Id: "n"}, TypeUrl: resourcev3.EndpointType, ResourceNames: []string{"trading"}}); err != nil {
		t.Fatal(err)
	}
	endpoints := make(chan int, 8)
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				close(endpoints)
				return
			}
			for _, r := range resp.GetResources() {
				cla := &endpointpb.ClusterLoadAssignment{}
				if r.UnmarshalTo(cla) == nil {
					n := 0
					for _, l := range cla.GetEndpoints() {
						n += len(l.GetLbEndpoints())
					}
					endpoints <- n
				}
			}
			_ = stream.Send(&discoverypb.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResourceNames: []string{"trading"},
				VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()})
		}
	}()
	if n := <-endpoints; n != 1 {
		t.Fatalf("first response has %d endpoints, want 1", n)
	}

	// The next push goroutine to look for work first sees the endpoint
	// change published.
	var once sync.Once
	hook := func() {
		once.Do(func() {
			if err := s.SetEndpoints("test", []Endpoint{{Service: "trading", Address: "10.0.0.1:8443"}, {Service: "trading", Address: "10.0.0.2:8443"}}); err != nil {
				t.Error(err)
			}
		})
	}
	testHookPushLock.Store(&hook)
	defer testHookPushLock.Store(nil)
	// Only clusters change: the stream, subscribed to endpoints, has
	// nothing to receive from this snapshot itself.
	if err := s.SetConfig("test", &Config{Services: []Service{{Name: "trading", LB: "least_request"}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-endpoints:
		if n != 2 {
			t.Fatalf("after the endpoint change got %d endpoints, want 2", n)
		}
	case <-ctx.Done():
		t.Fatal("the endpoint change published during a push never reached the stream")
	}
}
