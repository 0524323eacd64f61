package spire_test

import (
	"os"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/gridmesh/gridmesh/internal/testutil/spire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestStart checks the harness itself: a server and two agents come up, an
// entry registers, the server reports an active X.509 authority, and the
// server and an agent come back after a stop.
func TestStart(t *testing.T) {
	d := spire.Start(t, spire.Config{})
	if got := d.TrustDomain().Name(); got != "gridmesh.test" {
		t.Errorf("TrustDomain() = %q, want gridmesh.test", got)
	}
	a2 := d.AddAgent(t)
	if a2.SocketPath() == d.SocketPath() {
		t.Errorf("second agent shares socket %s", a2.SocketPath())
	}
	if len(d.SocketPath()) >= 108 {
		t.Errorf("socket path %q is too long for a unix socket", d.SocketPath())
	}
	id := d.RegisterWorkload(t, "spiffe://gridmesh.test/harness", []string{spire.UIDSelector(4242)}, 0)
	if id == "" {
		t.Error("RegisterWorkload returned an empty entry ID")
	}
	d.DeleteEntry(t, id)
	if a := d.X509Authorities(t); a.Active.ID == "" {
		t.Errorf("X509Authorities() = %+v, want an active authority", a)
	}
	d.StopServer(t)
	d.StartServer(t)
	a2.Restart(t)
}

func TestBinariesMissing(t *testing.T) {
	dir, err := os.MkdirTemp("", "spirebin")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	t.Setenv(spire.DirEnv, dir)
	_, _, err = spire.Binaries()
	if err == nil || !strings.Contains(err.Error(), "tools/spire/build.sh") || !strings.Contains(err.Error(), spire.SkipEnv) {
		t.Fatalf("Binaries() with an empty cache: %v; want an error naming tools/spire/build.sh and %s", err, spire.SkipEnv)
	}
}
