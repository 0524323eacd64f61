package controlplane_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/controlplane/registration"
	"github.com/gridmesh/gridmesh/internal/meshtls"
	"github.com/gridmesh/gridmesh/internal/testutil/consul"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
	"github.com/gridmesh/gridmesh/security"
)

// startConsulReplica starts a meshd that keeps registrations in the Consul
// agent a and reads them back through a ConsulSource, as meshd serve
// -consul does, serving over mTLS as spiffe://rec.test/meshd with an SVID
// from ca and spiffe://rec.test/ops as operator; its registration client
// (Client) is the operator's.
func startConsulReplica(t *testing.T, a *consul.Agent, cfg *controlplane.Config, ca *security.DevCA) *xdstest.Meshd {
	t.Helper()
	m := xdstest.StartMeshd(t, "", cfg, controlplane.WithConsulRegistrations(a.Client()),
		controlplane.WithMTLS(controlplane.MTLSConfig{
			Source:    devSource(t, ca, serviceID("meshd")),
			Operators: []spiffeid.ID{spiffeid.RequireFromString(serviceID("ops"))},
		}))
	m.ClientTLS = controlTLS(t, ca, "ops")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = controlplane.NewConsulSource(a.Client(), m.Server).Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

// controlTLS is workload's (a path in rec.test) client TLS config toward
// meshd, accepting only spiffe://rec.test/meshd.
func controlTLS(t *testing.T, ca *security.DevCA, workload string) *tls.Config {
	return meshtls.ClientTLSConfig(devSource(t, ca, serviceID(workload)), spiffeid.MatchID(spiffeid.RequireFromString(serviceID("meshd"))))
}

// waitSameRegistrations waits until every replica lists want through its
// registration API and serves the same snapshot version.
func waitSameRegistrations(ctx context.Context, t *testing.T, want []registration.Registration, replicas ...*xdstest.Meshd) {
	t.Helper()
	xdstest.WaitFor(ctx, t, "replicas agree on the registrations", func() error {
		for _, m := range replicas {
			got, err := m.Client(t).List(ctx)
			if err != nil {
				return err
			}
			if d := cmp.Diff(want, got, cmpEmpty); d != "" {
				return errors.New("replica " + m.HTTPAddr + " lists (-want +got):\n" + d)
			}
		}
		for _, m := range replicas[1:] {
			if m.Version() != replicas[0].Version() {
				return errors.New("replicas serve versions " + replicas[0].Version() + " and " + m.Version())
			}
		}
		return nil
	})
}

var cmpEmpty = cmp.Transformer("nilToEmpty", func(r []registration.Registration) []registration.Registration {
	if r == nil {
		return []registration.Registration{}
	}
	return r
})

// TestRegistrationsSharedThroughConsul: with registrations kept in Consul,
// what one replica is told every replica serves: a registration through
// one is listed by both and both serve one snapshot version; a client of
// the other replica reaches the registered server; a deregistration
// through the other removes it from both; a registration whose registrant
// stops renewing leaves both when its TTL runs out; and with Consul down a
// registration is refused with 503 (so a client tries another replica)
// and nothing changes. Everything runs over mTLS, as in production: the
// xDS channels and the registration API (as the operator).
func TestRegistrationsSharedThroughConsul(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	agent := consul.Start(t)
	ca := newMeshCA(t)
	cfg := withMTLS(twoVersions(controlplane.Route{Version: "v1"}))
	a := startConsulReplica(t, agent, cfg, ca)
	b := startConsulReplica(t, agent, cfg, ca)
	for _, m := range []*xdstest.Meshd{a, b} {
		if got := m.Stats().RegistrationStore; got != controlplane.StoreConsul {
			t.Fatalf("RegistrationStore = %q, want %q", got, controlplane.StoreConsul)
		}
	}

	// A server registers through replica a; a client of replica b reaches it.
	v1 := meshBackend(t, a, ca, xdstest.BackendOptions{Name: "v1", Service: "trading", Version: "v1", ControlTLS: controlTLS(t, ca, "trading")})
	reg := registration.Registration{Service: "trading", Version: "v1", Address: v1.Addr, SPIFFEID: serviceID("trading")}
	waitSameRegistrations(ctx, t, []registration.Registration{reg}, a, b)
	c := meshControlDial(t, b.Addr, "trading", devSource(t, ca, serviceID("gateway")))
	waitServedBy(ctx, t, c, "v1")

	// A registration with a TTL, renewed through b, then no more.
	ttlReg := registration.Registration{Service: "trading", Version: "v2", Address: "127.0.0.1:1", SPIFFEID: serviceID("trading"), Weight: 3, TTL: registration.Duration(2 * time.Second)}
	if err := b.Client(t).Register(ctx, ttlReg); err != nil {
		t.Fatal(err)
	}
	waitSameRegistrations(ctx, t, []registration.Registration{ttlReg, reg}, a, b)
	waitSameRegistrations(ctx, t, []registration.Registration{reg}, a, b)

	// An address registered for one service is refused for another, by
	// either replica.
	err := b.Client(t).Register(ctx, registration.Registration{Service: "billing", Address: v1.Addr})
	var rerr *registration.Error
	if !errors.As(err, &rerr) || rerr.Status != http.StatusConflict {
		t.Fatalf("registering trading's address for billing through b: %v, want 409", err)
	}

	// Deregistered through b: gone from both.
	if err := b.Client(t).Deregister(ctx, "trading", v1.Addr); err != nil {
		t.Fatal(err)
	}
	waitSameRegistrations(ctx, t, nil, a, b)
	if err := a.Client(t).Deregister(ctx, "trading", v1.Addr); !errors.Is(err, registration.ErrNotFound) {
		t.Fatalf("deregistering again: %v, want a 404", err)
	}

	// Consul down: refused with 503 naming Consul, nothing stored.
	version := a.Version()
	agent.Stop(t)
	err = a.Client(t).Register(ctx, reg)
	if !errors.As(err, &rerr) || rerr.Status != http.StatusServiceUnavailable {
		t.Fatalf("registering with Consul down: %v, want 503", err)
	}
	if want := "meshd keeps registrations in Consul and Consul refused or did not answer; nothing was registered, try again"; len(rerr.Message) < len(want) || rerr.Message[:len(want)] != want {
		t.Errorf("refusal = %q, want it to start %q", rerr.Message, want)
	}
	if a.Version() != version {
		t.Errorf("version moved from %s to %s with Consul down", version, a.Version())
	}
}

// TestRegistrationStoreIsSaid: a meshd without Consul says that it keeps
// registrations in memory, in its answers and its metrics, so a client
// given several replicas can warn.
func TestRegistrationStoreIsSaid(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := xdstest.StartMeshd(t, "", nil)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m.HTTPAddr+"/v1/endpoints", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get(registration.StoreHeader); got != controlplane.StoreMemory {
		t.Errorf("%s = %q, want %q", registration.StoreHeader, got, controlplane.StoreMemory)
	}
	if got := m.Stats().RegistrationStore; got != controlplane.StoreMemory {
		t.Errorf("Stats().RegistrationStore = %q, want %q", got, controlplane.StoreMemory)
	}
}
