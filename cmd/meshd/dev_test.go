package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"

	"github.com/gridmesh/gridmesh/controlplane/registration"
	"github.com/gridmesh/gridmesh/security"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestDevServesOneIdentityPerSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "meshd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ready := filepath.Join(dir, "ready")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- runDev(ctx, []string{"-socket-dir", dir, "-identities", "trading, spiffe://gridmesh.dev/ops/settlement", "-ready-file", ready, "-xds", "127.0.0.1:0"})
	}()
	for {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("runDev returned early: %v", err)
		case <-ctx.Done():
			t.Fatal("sockets not ready")
		case <-time.After(20 * time.Millisecond):
		}
	}
	b, _ := os.ReadFile(ready)
	if !strings.Contains(string(b), "xDS and registration API: 127.0.0.1:") || !strings.Contains(string(b), " over mTLS as spiffe://gridmesh.dev/meshd ") {
		t.Errorf("ready file does not name the xDS address served over mTLS as meshd:\n%s", b)
	}
	// meshd dev's xDS port takes no plaintext registration.
	if _, rest, ok := strings.Cut(string(b), "xDS and registration API: "); ok {
		addr, _, _ := strings.Cut(rest, " ")
		err := registration.NewClient(addr).Register(ctx, registration.Registration{Service: "trading", Address: "127.0.0.1:9"})
		if err == nil {
			t.Error("meshd dev took a plaintext registration")
		}
	}
	for sock, want := range map[string]string{
		"trading.sock":        "spiffe://gridmesh.dev/trading",
		"ops_settlement.sock": "spiffe://gridmesh.dev/ops/settlement",
	} {
		src, err := security.NewWorkloadAPISource(ctx, security.WorkloadAPIConfig{Address: "unix://" + filepath.Join(dir, sock)})
		if err != nil {
			t.Fatal(err)
		}
		got, err := security.ID(src)
		src.Close()
		if err != nil || got.String() != want {
			t.Errorf("socket %s gave %v (%v), want %s", sock, got, err, want)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("runDev: %v", err)
	}
}

func TestDevRefusesBadInput(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("gridmesh.dev")
	for _, tc := range []struct{ args, want string }{
		{"-identities=", "-identities is empty"},
		{"-trust-domain=Bad_Domain -identities=a", "-trust-domain"},
		{"-identities=spiffe://other.org/a", "not in trust domain"},
	} {
		err := runDev(context.Background(), strings.Fields(tc.args))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("runDev(%s) = %v, want error containing %q", tc.args, err, tc.want)
		}
	}
	if _, _, err := devIdentity(td, strings.Repeat("d", 120), "a"); err == nil {
		t.Error("an over-long socket path was accepted")
	}
}
