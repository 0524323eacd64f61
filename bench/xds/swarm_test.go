package xds

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"time"

	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/gridmesh/gridmesh/controlplane"
)

// runSwarm waits for a line on start, then runs n simulated xDS clients
// against addr until the parent kills it, reporting every endpoint update
// on w. With svidDir set the clients speak mTLS with the SVID in it and
// accept only meshd's default ID.
func runSwarm(addr string, n int, svidDir string, start io.Reader, w io.Writer) error {
	creds := insecure.NewCredentials()
	if svidDir != "" {
		var err error
		if creds, err = swarmCreds(svidDir); err != nil {
			return err
		}
	}
	if _, err := bufio.NewReader(start).ReadString('\n'); err != nil {
		return fmt.Errorf("waiting for the start line: %w", err)
	}
	// Reports carry the time the client had the update; they are written
	// out in batches (every few milliseconds, or when the buffer fills)
	// so that reporting costs the shared cores little.
	out := bufio.NewWriterSize(w, 1<<16)
	var mu sync.Mutex
	report := func(client, eps int) {
		at := time.Now().UnixNano()
		mu.Lock()
		fmt.Fprintf(out, "eds %d %d %d\n", client, eps, at)
		mu.Unlock()
	}
	go func() {
		for range time.Tick(5 * time.Millisecond) {
			mu.Lock()
			if out.Buffered() > 0 {
				_ = out.Flush()
			}
			mu.Unlock()
		}
	}()
	errc := make(chan error, n)
	for i := range n {
		go func() { errc <- simClient(context.Background(), addr, creds, i, report) }()
		if i%50 == 49 {
			time.Sleep(10 * time.Millisecond) // stagger connects a little, as a fleet's would be
		}
	}
	return <-errc
}

// simClient subscribes the way grpc-go does: LDS, RDS, CDS, EDS for one
// service on one ADS stream, ACKing each response.
func simClient(ctx context.Context, addr string, creds credentials.TransportCredentials, id int, report func(client, eps int)) error {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer cc.Close()
	// Until its first response a client retries, as grpc-go's xDS client
	// does: 10,000 TLS handshakes at once can outrun meshd's 10 s
	// handshake deadline on two shared cores, and meshd drops those
	// connections. After that any error ends the run.
	var (
		stream discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesClient
		resp   *discoverypb.DiscoveryResponse
	)
	for attempt := 0; ; attempt++ {
		stream, resp, err = subscribe(ctx, cc, id)
		if err == nil || attempt == 20 {
			break
		}
		time.Sleep(time.Duration(100+rand.IntN(900)) * time.Millisecond)
	}
	for err == nil {
		if err = handle(stream, resp, id, report); err == nil {
			resp, err = stream.Recv()
		}
	}
	return err
}

// subscribe opens an ADS stream, subscribes and returns the first
// response.
func subscribe(ctx context.Context, cc *grpc.ClientConn, id int) (discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesClient, *discoverypb.DiscoveryResponse, error) {
	stream, err := discoverypb.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx, grpc.WaitForReady(true))
	if err != nil {
		return nil, nil, err
	}
	node := &corepb.Node{Id: fmt.Sprintf("bench-%d", id)}
	for _, t := range []string{resourcev3.ListenerType, resourcev3.RouteType, resourcev3.ClusterType, resourcev3.EndpointType} {
		if err := stream.Send(&discoverypb.DiscoveryRequest{Node: node, TypeUrl: t, ResourceNames: []string{service}}); err != nil {
			return nil, nil, err
		}
		node = nil
	}
	resp, err := stream.Recv()
	return stream, resp, err
}

// handle reports an endpoint update in resp and ACKs it.
func handle(stream discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesClient, resp *discoverypb.DiscoveryResponse, id int, report func(client, eps int)) error {
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
	return stream.Send(&discoverypb.DiscoveryRequest{
		TypeUrl: resp.GetTypeUrl(), ResourceNames: []string{service},
		VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce(),
	})
}

// swarmCreds is the clients' mTLS: the SVID and bundle files in dir,
// meshd's default ID required of the server.
func swarmCreds(dir string) (credentials.TransportCredentials, error) {
	svid, err := x509svid.Load(filepath.Join(dir, "svid.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		return nil, fmt.Errorf("swarm SVID: %w", err)
	}
	td := svid.ID.TrustDomain()
	bundle, err := x509bundle.Load(td, filepath.Join(dir, "bundle.pem"))
	if err != nil {
		return nil, fmt.Errorf("swarm bundle: %w", err)
	}
	meshd, err := spiffeid.FromPath(td, controlplane.DefaultID)
	if err != nil {
		return nil, err
	}
	cfg := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(meshd))
	return credentials.NewTLS(cfg), nil
}
