package controlplane_test

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/gridmesh/gridmesh/controlplane"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
)

// tricklingConn writes its first n bytes one byte per write, so the peer
// can see a connection's opening bytes arrive in pieces.
type tricklingConn struct {
	net.Conn
	n int
}

func (c *tricklingConn) Write(p []byte) (int, error) {
	written := 0
	for c.n > 0 && len(p) > 0 {
		k, err := c.Conn.Write(p[:1])
		written += k
		if err != nil {
			return written, err
		}
		p = p[1:]
		c.n--
	}
	k, err := c.Conn.Write(p)
	return written + k, err
}

func dialTrickling(ctx context.Context, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &tricklingConn{Conn: c, n: 64}, nil
}

// The xDS port tells gRPC from HTTP/1.1 by the connection's first bytes
// without consuming them; a client whose first bytes arrive in pieces is
// still told apart, either way.
func TestXDSPortTellsProtocolsApartWhenTheFirstBytesTrickleIn(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := xdstest.StartMeshd(t, "", nil)
	if err := m.SetEndpoints("test", []controlplane.Endpoint{{Service: "trading", Address: "127.0.0.1:7000"}}); err != nil {
		t.Fatal(err)
	}

	t.Run("grpc", func(t *testing.T) {
		cc, err := grpc.NewClient("passthrough:///"+m.Addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(dialTrickling))
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
		req := &discoverypb.DiscoveryRequest{Node: &corepb.Node{Id: "trickle"}, TypeUrl: resourcev3.ClusterType, ResourceNames: []string{"trading"}}
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if got := len(resp.GetResources()); got != 1 {
			t.Errorf("got %d clusters, want 1", got)
		}
	})

	t.Run("http", func(t *testing.T) {
		c, err := dialTrickling(ctx, m.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if deadline, ok := ctx.Deadline(); ok {
			_ = c.SetDeadline(deadline)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m.Addr+"/healthz", nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := req.Write(c); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET /healthz: %s, want 200", resp.Status)
		}
	})
}
