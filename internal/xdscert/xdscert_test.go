package xdscert_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc/credentials/tls/certprovider"

	"github.com/gridmesh/gridmesh/internal/devworkloadapi"
	"github.com/gridmesh/gridmesh/internal/xdscert"
	"github.com/gridmesh/gridmesh/security"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var opts = certprovider.BuildOptions{WantIdentity: true, WantRoot: true}

// identity returns the SPIFFE ID in km's leaf after checking the roots
// verify it.
func identity(t *testing.T, km *certprovider.KeyMaterial) string {
	t.Helper()
	if len(km.Certs) != 1 {
		t.Fatalf("%d certificates, want 1", len(km.Certs))
	}
	leaf := km.Certs[0].Leaf
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: km.Roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("roots do not verify the leaf: %v", err)
	}
	if len(leaf.URIs) != 1 {
		t.Fatalf("leaf has %d URI SANs", len(leaf.URIs))
	}
	return leaf.URIs[0].String()
}

func TestRegisteredSource(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := security.NewDevCA(spiffeid.RequireTrustDomainFromString("rec.test"), security.DevCAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	src, err := ca.Source(spiffeid.RequireFromString("spiffe://rec.test/trading"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()

	cp, release := xdscert.Register(src)
	if cp.PluginName != xdscert.PluginName {
		t.Errorf("plugin %q, want %q", cp.PluginName, xdscert.PluginName)
	}
	p, err := certprovider.GetProvider(cp.PluginName, json.RawMessage(cp.Config), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	km, err := p.KeyMaterial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff("spiffe://rec.test/trading", identity(t, km)); diff != "" {
		t.Errorf("identity (-want +got):\n%s", diff)
	}

	release()
	release() // safe twice
	if _, err := p.KeyMaterial(ctx); err == nil || !strings.Contains(err.Error(), "released") {
		t.Errorf("KeyMaterial after release: %v, want a released error", err)
	}
	if _, err := certprovider.ParseConfig(cp.PluginName, json.RawMessage(cp.Config)); err == nil {
		t.Error("config naming a released source parsed")
	}
}

func TestWorkloadAPISource(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ca, err := security.NewDevCA(spiffeid.RequireTrustDomainFromString("rec.test"), security.DevCAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "xdscert") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	wl := devworkloadapi.New(ca)
	defer wl.Close()
	addr, err := wl.Add(filepath.Join(dir, "ledger.sock"), spiffeid.RequireFromString("spiffe://rec.test/ledger"))
	if err != nil {
		t.Fatal(err)
	}

	cp := xdscert.WorkloadAPI(addr)
	p, err := certprovider.GetProvider(cp.PluginName, json.RawMessage(cp.Config), opts)
	if err != nil {
		t.Fatal(err)
	}
	km, err := p.KeyMaterial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff("spiffe://rec.test/ledger", identity(t, km)); diff != "" {
		t.Errorf("identity (-want +got):\n%s", diff)
	}
	p.Close() // closes the X509Source; goleak checks its goroutines end
}
