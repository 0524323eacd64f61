package xds

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// runSwarm waits for a line on start, then runs n simulated xDS clients
// against addr until the parent kills it, reporting every endpoint update
// on w.
func runSwarm(addr string, n int, start io.Reader, w io.Writer) error {
	if _, err := bufio.NewReader(start).ReadString('\n'); err != nil {
		return fmt.Errorf("waiting for the start line: %w", err)
	}
	out := bufio.NewWriterSize(w, 1<<16)
	var mu sync.Mutex
	report := func(client, eps int) {
		mu.Lock()
		fmt.Fprintf(out, "eds %d %d %d\n", client, eps, time.Now().UnixNano())
		out.Flush()
		mu.Unlock()
	}
	errc := make(chan error, n)
	for i := range n {
		go func() { errc <- simClient(context.Background(), addr, i, report) }()
		if i%50 == 49 {
			time.Sleep(10 * time.Millisecond) // stagger connects a little, as a fleet's would be
		}
	}
	return <-errc
}

// simClient subscribes the way grpc-go does: LDS, RDS, CDS, EDS for one
// service on one ADS stream, ACKing each response.
func simClient(ctx context.Context, addr string, id int, report func(client, eps int)) error {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	stream, err := discoverypb.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	node := &corepb.Node{Id: fmt.Sprintf("bench-%d", id)}
	for _, t := range []string{resourcev3.ListenerType, resourcev3.RouteType, resourcev3.ClusterType, resourcev3.EndpointType} {
		if err := stream.Send(&discoverypb.DiscoveryRequest{Node: node, TypeUrl: t, ResourceNames: []string{service}}); err != nil {
			return err
		}
		node = nil
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		if resp.GetTypeUrl() == resourcev3.EndpointType {
			for _, r := range resp.GetResources() {
				cla := &endpointpb.ClusterLoadAssignment{}
				if err := r.UnmarshalTo(cla); err != nil {
					return err
				}
				if cla.GetClusterName() == service {
					eps := 0
					for _, l := range cla.GetEndpoints() {
						eps += len(l.GetLbEndpoints())
					}
					report(id, eps)
				}
			}
		}
		if err := stream.Send(&discoverypb.DiscoveryRequest{
			TypeUrl: resp.GetTypeUrl(), ResourceNames: []string{service},
			VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce(),
		}); err != nil {
			return err
		}
	}
}
