package controlplane_test

import (
	"context"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/gridmesh/gridmesh/controlplane"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

// The end-to-end tests of issue 4 dial through mesh.Dial, as users do. In
// xDS mode the mesh's client credentials are grpc-go's xDS credentials with
// the mesh's mTLS as fallback, so these tests run meshd with mtls: true and
// give every backend an SVID from the same dev CA as the callers.

// meshTD is the trust domain of the mesh.Dial tests.
const meshTD = "rec.test"

// newMeshCA returns a dev CA for meshTD.
func newMeshCA(t *testing.T) *security.DevCA {
	t.Helper()
	ca, err := security.NewDevCA(spiffeid.RequireTrustDomainFromString(meshTD), security.DevCAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// withMTLS returns cfg with mtls: true.
func withMTLS(cfg *controlplane.Config) *controlplane.Config {
	cfg.MTLS = true
	return cfg
}

// serviceID is the SPIFFE ID the backends of service present and register.
func serviceID(service string) string { return "spiffe://" + meshTD + "/" + service }

// meshBackend starts a backend of o.Service with an SVID from ca for
// serviceID(o.Service), registered under that ID.
func meshBackend(t *testing.T, m *xdstest.Meshd, ca *security.DevCA, o xdstest.BackendOptions) *xdstest.Backend {
	t.Helper()
	o.SPIFFEID = serviceID(o.Service)
	o.Identity = devSource(t, ca, o.SPIFFEID)
	return xdstest.StartBackend(t, m, o)
}

// meshDial returns a TestService client for xds:///service made by
// mesh.Dial with src as the caller's identity and meshd at addr as the
// control plane. Closed at cleanup.
func meshDial(t *testing.T, addr, service string, src security.Source) testgrpc.TestServiceClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cc, err := mesh.Dial(ctx, "xds:///"+service, mesh.WithIdentity(src), mesh.WithControlPlane(addr), mesh.WithInsecurePlaintextControlPlaneForLocalDebugging())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return testgrpc.NewTestServiceClient(cc)
}

// meshControlDial is meshDial with the control channel over mTLS: src's
// SVID presented to meshd at addr, which must be spiffe://rec.test/meshd.
func meshControlDial(t *testing.T, addr, service string, src security.Source) testgrpc.TestServiceClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cc, err := mesh.Dial(ctx, "xds:///"+service, mesh.WithIdentity(src), mesh.WithControlPlane(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return testgrpc.NewTestServiceClient(cc)
}

// meshCaller returns meshDial's client for a caller spiffe://rec.test/gateway.
func meshCaller(t *testing.T, addr, service string, ca *security.DevCA) testgrpc.TestServiceClient {
	t.Helper()
	return meshDial(t, addr, service, devSource(t, ca, "spiffe://"+meshTD+"/gateway"))
}
