package controlplane_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/internal/devworkloadapi"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
	"github.com/gridmesh/gridmesh/internal/xdscert"
	"github.com/gridmesh/gridmesh/security"
)

// devSource issues a rotating SVID for id from ca, closed at cleanup.
func devSource(t *testing.T, ca *security.DevCA, id string) *security.DevSource {
	t.Helper()
	src, err := ca.Source(spiffeid.RequireFromString(id))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	return src
}

func TestRBACAllowsListedIdentityAndDeniesOthers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ca, err := security.NewDevCA(spiffeid.RequireTrustDomainFromString("rec.test"), security.DevCAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	const ledgerID = "spiffe://rec.test/ledger"
	m := xdstest.StartMeshd(t, "", &controlplane.Config{
		MTLS: true,
		Services: []controlplane.Service{{
			Name: "ledger",
			Authorization: []controlplane.Policy{{
				Name:    "trading-may-call",
				Sources: []string{"spiffe://rec.test/trading"},
				Methods: []string{"/grpc.testing.TestService/UnaryCall"},
			}, {
				Name:    "ops-may-call-anything",
				Sources: []string{"spiffe://rec.test/ops/*"},
				Methods: []string{"/grpc.testing.TestService/*"},
			}},
		}},
	})
	// The ledger gets its SVID from a Workload API socket, as in
	// production; callers from in-process sources.
	dir, err := os.MkdirTemp("", "rbac") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	wl := devworkloadapi.New(ca)
	t.Cleanup(func() { wl.Close() })
	sock, err := wl.Add(filepath.Join(dir, "ledger.sock"), spiffeid.RequireFromString(ledgerID))
	if err != nil {
		t.Fatal(err)
	}
	xdstest.StartBackend(t, m, xdstest.BackendOptions{
		Name: "ledger-1", Service: "ledger", SPIFFEID: ledgerID,
		CertProvider: xdscert.WorkloadAPI(sock),
	})

	evil, err := security.NewDevCA(spiffeid.RequireTrustDomainFromString("evil.test"), security.DevCAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		caller   string
		empty    bool // call EmptyCall instead of UnaryCall
		wantCode codes.Code
	}{
		{"allowed identity", "spiffe://rec.test/trading", false, codes.OK},
		{"allowed identity, method not listed", "spiffe://rec.test/trading", true, codes.PermissionDenied},
		{"other identity", "spiffe://rec.test/metering", false, codes.PermissionDenied},
		{"allowed path prefix is not enough", "spiffe://rec.test/trading/extra", false, codes.PermissionDenied},
		{"under an allowed path", "spiffe://rec.test/ops/alice", true, codes.OK},
		{"the allowed path itself", "spiffe://rec.test/ops", false, codes.OK},
		{"a sibling sharing the prefix", "spiffe://rec.test/opsx", false, codes.PermissionDenied},
		{"other trust domain", "spiffe://evil.test/trading", false, codes.Unavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			issuer := ca
			if spiffeid.RequireFromString(tt.caller).TrustDomain().Name() == "evil.test" {
				issuer = evil
			}
			c := meshDial(t, m.Addr, "ledger", devSource(t, issuer, tt.caller))
			if tt.wantCode == codes.Unavailable {
				// The ledger refuses the handshake: no verdict ever comes.
				cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
				defer ccancel()
				_, err := call(cctx, c)
				t.Logf("call as %s: %v", tt.caller, err)
				if status.Code(err) != codes.Unavailable {
					t.Errorf("call as %s: %v, want UNAVAILABLE (handshake refused)", tt.caller, err)
				}
				return
			}
			var last error
			xdstest.WaitFor(ctx, t, "a verdict from the ledger", func() error {
				if tt.empty {
					_, last = c.EmptyCall(ctx, &testgrpc.Empty{})
				} else {
					_, last = call(ctx, c)
				}
				if code := status.Code(last); code == codes.OK || code == codes.PermissionDenied {
					return nil
				}
				return last
			})
			if got := status.Code(last); got != tt.wantCode {
				t.Errorf("call as %s: code %v (%v), want %v", tt.caller, got, last, tt.wantCode)
			}
		})
	}
}

// TestClientRefusesServerWithUnregisteredIdentity: the cluster carries the
// SPIFFE IDs its endpoints registered, so a server presenting another ID
// (same trust domain) is refused by the client.
func TestClientRefusesServerWithUnregisteredIdentity(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ca, err := security.NewDevCA(spiffeid.RequireTrustDomainFromString("rec.test"), security.DevCAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	m := xdstest.StartMeshd(t, "", &controlplane.Config{MTLS: true, Services: []controlplane.Service{{Name: "ledger"}}})
	xdstest.StartBackend(t, m, xdstest.BackendOptions{
		Name: "impostor", Service: "ledger", SPIFFEID: "spiffe://rec.test/ledger",
		Identity: devSource(t, ca, "spiffe://rec.test/impostor"),
	})
	c := meshDial(t, m.Addr, "ledger", devSource(t, ca, "spiffe://rec.test/trading"))
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	defer ccancel()
	_, err = call(cctx, c)
	if status.Code(err) != codes.Unavailable {
		t.Errorf("call to a server with the wrong ID: %v, want UNAVAILABLE", err)
	}
	t.Logf("refused: %v", err)
}
