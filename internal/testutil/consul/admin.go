package consul

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// opTimeout bounds each administrative call the harness makes.
const opTimeout = 30 * time.Second

func (a *Agent) opContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	t.Cleanup(cancel)
	return ctx
}

// CreateToken creates an ACL policy named name with the given rules (Consul
// ACL rules in HCL, e.g. `service "trading" { policy = "write" }`) and a
// token holding only that policy, and returns the token's secret ID.
// Needs [WithACLs].
func (a *Agent) CreateToken(t testing.TB, name, rules string) string {
	t.Helper()
	if a.token == "" {
		t.Fatal("consul: CreateToken needs an agent started WithACLs()")
	}
	acl := a.Client().ACL()
	w := (&api.WriteOptions{}).WithContext(a.opContext(t))
	policy, _, err := acl.PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, w)
	if err != nil {
		t.Fatalf("consul: create policy %q: %v", name, err)
	}
	tok, _, err := acl.TokenCreate(&api.ACLToken{
		Description: "gridmesh test token " + name,
		Policies:    []*api.ACLTokenPolicyLink{{ID: policy.ID}},
	}, w)
	if err != nil {
		t.Fatalf("consul: create token for policy %q: %v", name, err)
	}
	return tok.SecretID
}

// WriteConfigEntry writes a config entry (service-defaults,
// service-intentions, proxy-defaults, ...) with the management token.
func (a *Agent) WriteConfigEntry(t testing.TB, entry api.ConfigEntry) {
	t.Helper()
	ok, _, err := a.Client().ConfigEntries().Set(entry, (&api.WriteOptions{}).WithContext(a.opContext(t)))
	if err != nil || !ok {
		t.Fatalf("consul: write config entry %s %q: ok=%v, %v", entry.GetKind(), entry.GetName(), ok, err)
	}
}

// CARoots returns the Connect CA's roots.
func (a *Agent) CARoots(t testing.TB) *api.CARootList {
	t.Helper()
	roots, _, err := a.Client().Connect().CARoots((&api.QueryOptions{}).WithContext(a.opContext(t)))
	if err != nil {
		t.Fatalf("consul: CA roots: %v", err)
	}
	return roots
}

// RotateCA forces a Connect CA rotation: it sets the built-in CA's
// configuration (PUT /v1/connect/ca/configuration) to a new private key, so
// Consul makes a new root, cross-signs it with the old one and keeps both in
// the roots list until the old one's leaves are replaced. It blocks until the
// new root is the active one and returns its ID.
func (a *Agent) RotateCA(t testing.TB) string {
	t.Helper()
	ctx := a.opContext(t)
	connect := a.Client().Connect()
	before := a.CARoots(t).ActiveRootID
	conf, _, err := connect.CAGetConfig((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		t.Fatalf("consul: CA configuration: %v", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("consul: CA key: %v", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatalf("consul: CA key: %v", err)
	}
	if conf.Config == nil {
		conf.Config = map[string]any{}
	}
	// The built-in provider makes its root from this key; without RootCert
	// it signs a new root itself.
	conf.Config["PrivateKey"] = string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	conf.Config["PrivateKeyType"] = "ec"
	conf.Config["PrivateKeyBits"] = 256
	delete(conf.Config, "RootCert")
	if _, err := connect.CASetConfig(conf, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		t.Fatalf("consul: set CA configuration: %v", err)
	}
	for {
		roots := a.CARoots(t)
		if roots.ActiveRootID != "" && roots.ActiveRootID != before {
			return roots.ActiveRootID
		}
		select {
		case <-ctx.Done():
			t.Fatalf("consul: active CA root still %s after setting a new key", before)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// JoinWAN joins this agent and other (started [WithDatacenter] with another
// datacenter) over the WAN, so each answers ?dc= for the other's datacenter,
// and blocks until both list both datacenters.
func (a *Agent) JoinWAN(t testing.TB, other *Agent) {
	t.Helper()
	ctx := a.opContext(t)
	other.mu.Lock()
	addr := "127.0.0.1:" + strconv.Itoa(other.ports.serfWAN)
	other.mu.Unlock()
	if err := a.Client().Agent().Join(addr, true); err != nil {
		t.Fatalf("consul: WAN join %s (dc %s) to %s: %v", a.cfg.datacenter, a.Addr(), addr, err)
	}
	want := []string{a.cfg.datacenter, other.cfg.datacenter}
	slices.Sort(want)
	for _, ag := range []*Agent{a, other} {
		catalog := ag.Client().Catalog()
		for {
			dcs, err := catalog.Datacenters()
			if err == nil {
				slices.Sort(dcs)
				if slices.Equal(dcs, want) {
					break
				}
			}
			select {
			case <-ctx.Done():
				t.Fatalf("consul: agent in %s lists datacenters %v (%v), want %v", ag.cfg.datacenter, dcs, err, want)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}
