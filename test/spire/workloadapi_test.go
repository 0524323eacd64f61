package spire_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/gridmesh/gridmesh/internal/testutil/spire"
)

// These tests use go-spiffe directly against the agent: they pin down what
// SPIRE itself does, so a failure in the mesh tests can be told apart from a
// failure of the harness.

func TestWorkloadAPISVIDArrives(t *testing.T) {
	t.Parallel()
	start := time.Now()
	d := spire.Start(t, spire.Config{})
	t.Logf("server and agent healthy after %v", time.Since(start).Round(time.Millisecond))
	id := d.ID("/trading")
	d.RegisterWorkload(t, id.String(), []string{spire.UIDSelector(os.Getuid())}, time.Minute)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	registered := time.Now()
	src := newSource(ctx, t, d.Addr())
	t.Logf("first SVID %v after registration", time.Since(registered).Round(time.Millisecond))

	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != id {
		t.Errorf("SVID ID = %s, want %s", svid.ID, id)
	}
	if left := time.Until(svid.Certificates[0].NotAfter); left <= 0 || left > time.Minute+time.Second {
		t.Errorf("SVID expires in %v, want within the entry's 1m TTL", left)
	}
	if active := d.X509Authorities(t).Active.ID; !bundleHas(src, d.TrustDomain(), active) {
		t.Errorf("bundle lacks the server's active authority %s", active)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, src); err != nil {
		t.Errorf("SVID does not verify against the bundle: %v", err)
	}
}

func TestWorkloadAPISVIDRotates(t *testing.T) {
	t.Parallel()
	const ttl = 20 * time.Second
	d := spire.Start(t, spire.Config{})
	id := d.ID("/trading")
	d.RegisterWorkload(t, id.String(), []string{spire.UIDSelector(os.Getuid())}, ttl)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	src := newSource(ctx, t, d.Addr())
	first, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	// The agent renews at half-life: two rotations take about one TTL.
	const want = 2
	prev := first.Certificates[0]
	last := time.Now()
	for rotations := 0; rotations < want; {
		waitFor(ctx, t, "an SVID rotation", func() bool {
			svid, err := src.GetX509SVID()
			return err == nil && svid.Certificates[0].SerialNumber.Cmp(prev.SerialNumber) != 0
		})
		svid, _ := src.GetX509SVID()
		cur := svid.Certificates[0]
		rotations++
		t.Logf("rotation %d after %v: serial %x, expires %v", rotations, time.Since(last).Round(time.Millisecond), cur.SerialNumber, cur.NotAfter.UTC().Format(time.TimeOnly))
		last = time.Now()
		if svid.ID != id {
			t.Errorf("rotated SVID ID = %s, want %s", svid.ID, id)
		}
		if !cur.NotAfter.After(prev.NotAfter) {
			t.Errorf("rotated SVID expires %v, not after the previous %v", cur.NotAfter, prev.NotAfter)
		}
		if _, _, err := x509svid.Verify(svid.Certificates, src); err != nil {
			t.Errorf("rotated SVID does not verify against the bundle: %v", err)
		}
		prev = cur
	}
}

func TestUnregisteredWorkloadGetsNoIdentity(t *testing.T) {
	t.Parallel()
	const deadline = 5 * time.Second
	d := spire.Start(t, spire.Config{})
	// Entries for the test process (root) and for uid 4243; none for 4242.
	d.RegisterWorkload(t, d.ID("/trading").String(), []string{spire.UIDSelector(os.Getuid())}, 0)
	d.RegisterWorkload(t, d.ID("/other").String(), []string{spire.UIDSelector(4243)}, 0)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Wait until the agent has the entries, so a refusal below is about the
	// selectors, not about timing.
	newSource(ctx, t, d.Addr())

	t.Run("another uid on the same agent", func(t *testing.T) {
		start := time.Now()
		out, code := runWorkloadAs(ctx, t, 4242, d.Addr(), "go-spiffe", deadline)
		t.Logf("unregistered workload: exit %d after %v: %s", code, time.Since(start).Round(time.Millisecond), out)
		if code != 3 || !strings.HasPrefix(out, "ERR ") {
			t.Fatalf("unregistered workload: exit %d, output %q; want exit 3 and an error", code, out)
		}
	})
	t.Run("a registered uid in a separate process", func(t *testing.T) {
		// The control for the case above: the same helper, under a uid
		// that has an entry, gets its identity.
		out, code := runWorkloadAs(ctx, t, 4243, d.Addr(), "go-spiffe", 30*time.Second)
		if want := "ID " + d.ID("/other").String(); code != 0 || out != want {
			t.Fatalf("registered workload: exit %d, output %q; want %q", code, out, want)
		}
	})
	t.Run("an agent with no entries for it", func(t *testing.T) {
		a2 := d.AddAgent(t)
		start := time.Now()
		sctx, scancel := context.WithTimeout(ctx, deadline)
		defer scancel()
		src, err := workloadapi.NewX509Source(sctx, workloadapi.WithClientOptions(
			workloadapi.WithAddr(a2.Addr()), workloadapi.WithBackoffStrategy(fastBackoff{})))
		if err == nil {
			src.Close()
			t.Fatal("NewX509Source on an agent with no entries for this workload succeeded")
		}
		elapsed := time.Since(start)
		t.Logf("unregistered workload: %v after %v", err, elapsed.Round(time.Millisecond))
		if elapsed > deadline+5*time.Second {
			t.Errorf("NewX509Source returned %v after its %v deadline", elapsed-deadline, deadline)
		}
	})
}

// TestCARotationReachesWorkload forces a full X.509 CA rotation through
// spire-server (prepare, activate, taint, revoke) and follows it in a running
// workload's source: new root in the bundle, SVID re-signed, old root gone.
func TestCARotationReachesWorkload(t *testing.T) {
	t.Parallel()
	d := spire.Start(t, spire.Config{})
	td := d.TrustDomain()
	d.RegisterWorkload(t, d.ID("/trading").String(), []string{spire.UIDSelector(os.Getuid())}, 10*time.Minute)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	src := newSource(ctx, t, d.Addr())
	old := d.X509Authorities(t).Active.ID
	if got := signedBy(src); got != old {
		t.Fatalf("SVID signed by %q, want the active authority %q", got, old)
	}

	step := time.Now()
	next := d.PrepareX509Authority(t)
	waitFor(ctx, t, "the prepared CA in the workload's bundle", func() bool { return bundleHas(src, td, next) })
	t.Logf("prepared %s: in the workload's bundle after %v", next, time.Since(step).Round(time.Millisecond))

	d.ActivateX509Authority(t, next)
	step = time.Now()
	d.TaintX509Authority(t, old)
	waitFor(ctx, t, "an SVID signed by the new CA", func() bool { return signedBy(src) == next })
	t.Logf("activated %s, tainted %s: SVID re-signed after %v", next, old, time.Since(step).Round(time.Millisecond))

	step = time.Now()
	d.RevokeX509Authority(t, old)
	waitFor(ctx, t, "the revoked CA to leave the bundle", func() bool { return !bundleHas(src, td, old) })
	t.Logf("revoked %s: gone from the workload's bundle after %v", old, time.Since(step).Round(time.Millisecond))

	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, src); err != nil {
		t.Errorf("SVID after the rotation does not verify against the bundle: %v", err)
	}
}
