package mesh_test

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/controlplane"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
	"github.com/gridmesh/gridmesh/mesh"
)

// TestXDSModeWithoutBootstrapFile: a mesh server and client configured only
// with meshd's address talk over mTLS, with meshd's RBAC enforced, and the
// server registers and deregisters itself.
func TestXDSModeWithoutBootstrapFile(t *testing.T) {
	cfg, err := controlplane.ParseConfig("meshd.yaml", []byte(`mtls: true
services:
  - name: trading
    authorization:
      - name: gateway-only
        sources: [spiffe://example.org/gateway]
        methods: ["/grpc.testing.TestService/*"]
`))
	if err != nil {
		t.Fatal(err)
	}
	meshd := xdstest.StartMeshd(t, "", cfg)
	ca := newDevCA(t, time.Hour)
	svc := &echoService{}
	srv, err := mesh.NewServer(mesh.WithIdentity(devSource(t, ca, "/trading")),
		mesh.WithControlPlane(meshd.Addr), mesh.WithXDSService("trading", ""))
	if err != nil {
		t.Fatal(err)
	}
	testgrpc.RegisterTestServiceServer(srv, svc)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()
	defer func() {
		cancel()
		srv.Close()
		<-served
	}()

	call := func(caller string) (*peer.Peer, error) {
		cc, err := mesh.Dial(ctx, "xds:///trading", mesh.WithIdentity(devSource(t, ca, caller)), mesh.WithControlPlane(meshd.Addr))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		var p peer.Peer
		callCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		_, err = testgrpc.NewTestServiceClient(cc).UnaryCall(callCtx, &testpb.SimpleRequest{}, grpc.WaitForReady(true), grpc.Peer(&p))
		return &p, err
	}
	p, err := call("/gateway")
	if err != nil {
		t.Fatalf("gateway's call over xDS: %v", err)
	}
	if info, ok := p.AuthInfo.(credentials.TLSInfo); !ok || info.SPIFFEID == nil || info.SPIFFEID.String() != "spiffe://example.org/trading" {
		t.Errorf("client did not see the server's SPIFFE ID over mTLS: %#v", p.AuthInfo)
	}
	before := svc.calls.Load()
	if _, err := call("/intruder"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("intruder's call: %v, want PermissionDenied from meshd's RBAC", err)
	}
	if svc.calls.Load() != before {
		t.Error("handler ran for a call RBAC denied")
	}
}
