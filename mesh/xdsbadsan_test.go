package mesh_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/internal/testutil/pki"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
	"github.com/gridmesh/gridmesh/mesh"
)

// TestXDSModeRefusesBadSANAtHandshake: in xDS mode grpc-go's xDS
// credentials verify chains and match the server's SANs themselves, on
// crypto/x509's parsed names; the mesh's SAN checks still fail the
// handshake, on the client for a server's certificate and on the server
// for a client's, so no call reaches a handler.
func TestXDSModeRefusesBadSANAtHandshake(t *testing.T) {
	cfg, err := controlplane.ParseConfig("meshd.yaml", []byte(`mtls: true
services:
  - name: trading
    authorization:
      - name: gateway
        sources: [spiffe://example.org/gateway]
        methods: ["/grpc.testing.TestService/*"]
`))
	if err != nil {
		t.Fatal(err)
	}
	ca := pki.NewCA(t, "example.org")
	const server, client = "spiffe://example.org/trading", "spiffe://example.org/gateway"
	tests := []struct {
		name           string
		server, client []pki.SAN
		ok             bool
	}{
		{"good certificates", []pki.SAN{pki.URI(server)}, []pki.SAN{pki.URI(client)}, true},
		{"server DNS SAN with a NUL", []pki.SAN{pki.URI(server), pki.DNS("victim\x00.evil.org")}, []pki.SAN{pki.URI(client)}, false},
		{"server ID with an upper-case scheme", []pki.SAN{pki.URI("SPIFFE://example.org/trading")}, []pki.SAN{pki.URI(client)}, false},
		{"client email SAN with a NUL", []pki.SAN{pki.URI(server)}, []pki.SAN{pki.URI(client), pki.Email("gateway@example.org\x00evil")}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			meshd := xdstest.StartMeshd(t, "", cfg)
			svc := &echoService{}
			startServer(t, svc, mesh.WithIdentity(ca.SourceSANs(t, server, tc.server)),
				mesh.WithControlPlane(meshd.Addr), mesh.WithInsecurePlaintextControlPlaneForLocalDebugging(), mesh.WithXDSService("trading", ""))

			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cc, err := mesh.Dial(ctx, "xds:///trading", mesh.WithIdentity(ca.SourceSANs(t, client, tc.client)), mesh.WithControlPlane(meshd.Addr), mesh.WithInsecurePlaintextControlPlaneForLocalDebugging())
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			// Long enough for xDS to deliver the route and a handshake to
			// be tried, and retried, many times.
			callCtx, callCancel := context.WithTimeout(ctx, 5*time.Second)
			defer callCancel()
			_, err = testgrpc.NewTestServiceClient(cc).UnaryCall(callCtx, &testpb.SimpleRequest{}, grpc.WaitForReady(true))
			if tc.ok {
				if err != nil {
					t.Fatalf("UnaryCall: %v", err)
				}
				return
			}
			if c := status.Code(err); c != codes.DeadlineExceeded && c != codes.Unavailable {
				t.Errorf("UnaryCall = %v, want the handshake to fail (DEADLINE_EXCEEDED or UNAVAILABLE)", err)
			}
			if n := svc.calls.Load(); n != 0 {
				t.Errorf("handler ran %d times, want 0", n)
			}
		})
	}
}
