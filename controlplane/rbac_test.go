package controlplane_test

import (
	"context"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/controlplane"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
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
			}},
		}},
	})
	xdstest.StartBackend(t, m, xdstest.BackendOptions{
		Name: "ledger-1", Service: "ledger", SPIFFEID: ledgerID,
		Identity: devSource(t, ca, ledgerID),
	})

	tests := []struct {
		name     string
		caller   string
		wantCode codes.Code
	}{
		{"allowed identity", "spiffe://rec.test/trading", codes.OK},
		{"other identity", "spiffe://rec.test/metering", codes.PermissionDenied},
		{"allowed path prefix is not enough", "spiffe://rec.test/trading/extra", codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := xdstest.Dial(t, m.Addr, "ledger", devSource(t, ca, tt.caller))
			var last error
			xdstest.WaitFor(ctx, t, "a verdict from the ledger", func() error {
				_, last = call(ctx, c)
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
