package controlplane_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/gridmesh/gridmesh/controlplane"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
)

// adsClient is a raw ADS client subscribed to the endpoints of services.
type adsClient struct {
	stream discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	cc     *grpc.ClientConn

	mu  sync.Mutex
	eps map[string]int // service → endpoints in the last EDS response
}

func dialADS(ctx context.Context, t *testing.T, addr, node string, services ...string) *adsClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	stream, err := discoverypb.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoverypb.DiscoveryRequest{Node: &corepb.Node{Id: node}, TypeUrl: resourcev3.EndpointType, ResourceNames: services}); err != nil {
		t.Fatal(err)
	}
	return &adsClient{stream: stream, cc: cc, eps: map[string]int{}}
}

// read reads and ACKs responses until the stream ends.
func (c *adsClient) read(services []string) {
	for {
		resp, err := c.stream.Recv()
		if err != nil {
			return
		}
		for _, r := range resp.GetResources() {
			cla := &endpointpb.ClusterLoadAssignment{}
			if r.UnmarshalTo(cla) != nil {
				continue
			}
			n := 0
			for _, l := range cla.GetEndpoints() {
				n += len(l.GetLbEndpoints())
			}
			c.mu.Lock()
			c.eps[cla.GetClusterName()] = n
			c.mu.Unlock()
		}
		if c.stream.Send(&discoverypb.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResourceNames: services,
			VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}) != nil {
			return
		}
	}
}

func (c *adsClient) endpoints(service string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.eps[service]
}

func manyEndpoints(service string, n, from int) []controlplane.Endpoint {
	eps := make([]controlplane.Endpoint, n)
	for i := range eps {
		eps[i] = controlplane.Endpoint{Service: service, Address: fmt.Sprintf("10.%d.%d.%d:8443", from, i/250, i%250+1)}
	}
	return eps
}

// TestStalledStreamDelaysNoOtherClient: a client that subscribes to a
// large endpoint list and then stops reading fills its stream's flow
// control window, so meshd's send to it blocks. While it does, every other
// client gets every endpoint change, the change is accepted (SetEndpoints
// returns), a new client is served, and /debug/clients answers; when the
// stalled client goes, its stream is freed.
func TestStalledStreamDelaysNoOtherClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m := xdstest.StartMeshd(t, "", &controlplane.Config{Services: []controlplane.Service{{Name: "trading"}, {Name: "billing"}}})
	// 5,000 endpoints: an EDS response of about 150 KB, over the 64 KB
	// stream window grpc-go grants a stream that is not read plus the
	// 64 KB a server stream may queue, so the send blocks.
	const big = 5000
	set := func(round int) {
		t.Helper()
		eps := append(manyEndpoints("trading", big, 0), manyEndpoints("billing", round+1, 200)...)
		if err := m.SetEndpoints("test", eps); err != nil {
			t.Fatal(err)
		}
	}
	set(0)

	stalledCtx, stopStalled := context.WithCancel(ctx)
	defer stopStalled()
	dialADS(stalledCtx, t, m.Addr, "stalled", "trading") // never read

	// The others read billing's endpoints only; every change moves the
	// endpoints' version, so the stalled stream has a push pending too.
	services := []string{"billing"}
	var wg sync.WaitGroup
	defer wg.Wait()
	var readers []*adsClient
	start := func(node string) *adsClient {
		c := dialADS(ctx, t, m.Addr, node, services...)
		wg.Add(1)
		go func() { defer wg.Done(); c.read(services) }()
		readers = append(readers, c)
		return c
	}
	for i := range 3 {
		start(fmt.Sprintf("reader-%d", i))
	}
	waitAll := func(round int) {
		t.Helper()
		xdstest.WaitFor(ctx, t, fmt.Sprintf("every reading client has round %d", round), func() error {
			for i, c := range readers {
				if got := c.endpoints("billing"); got != round+1 {
					return fmt.Errorf("client %d has %d billing endpoints, want %d", i, got, round+1)
				}
			}
			return nil
		})
	}
	waitAll(0)
	for round := 1; round <= 5; round++ {
		set(round)
		if round == 3 {
			start("late") // a client arriving during the stall is served
		}
		waitAll(round)
		if n := len(m.Clients()); n != len(readers)+1 {
			t.Fatalf("/debug/clients lists %d streams, want %d", n, len(readers)+1)
		}
	}

	stopStalled()
	xdstest.WaitFor(ctx, t, "the stalled client's stream is freed", func() error {
		if n := m.Stats().Clients; n != len(readers) {
			return fmt.Errorf("%d streams, want %d", n, len(readers))
		}
		return nil
	})
	for _, c := range readers {
		c.cc.Close()
	}
}
