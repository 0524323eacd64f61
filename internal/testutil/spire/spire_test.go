package spire_test

import (
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
	if id := d.RegisterWorkload(t, "spiffe://gridmesh.test/harness", []string{spire.UIDSelector(4242)}, 0); id == "" {
		t.Error("RegisterWorkload returned an empty entry ID")
	}
	if a := d.X509Authorities(t); a.Active.ID == "" {
		t.Errorf("X509Authorities() = %+v, want an active authority", a)
	}
	d.StopServer(t)
	d.StartServer(t)
	a2.Restart(t)
}
