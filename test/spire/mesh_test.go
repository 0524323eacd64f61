package spire_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/internal/testutil/spire"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Every mesh test here registers its identities for the test process's uid on
// one agent, as services sharing a node would be, and each source picks its
// own with WorkloadAPIConfig.ExpectedID.

// pace of the background load: workers × (1/every) calls a second.
const (
	loadWorkers = 2
	loadEvery   = 50 * time.Millisecond
)

func registerAll(t *testing.T, d *spire.Deployment, ttl time.Duration, paths ...string) {
	t.Helper()
	for _, p := range paths {
		d.RegisterWorkload(t, d.ID(p).String(), []string{spire.UIDSelector(os.Getuid())}, ttl)
	}
}

func TestMeshGRPCAuthorizedBySPIREIdentities(t *testing.T) {
	t.Parallel()
	d := spire.Start(t, spire.Config{})
	registerAll(t, d, 0, "/trading", "/frontend", "/rogue")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	trading := workloadSource(ctx, t, d, d.Addr(), "/trading")
	frontend := workloadSource(ctx, t, d, d.Addr(), "/frontend")
	rogue := workloadSource(ctx, t, d, d.Addr(), "/rogue")

	authz, err := security.Rules(security.Allow("frontend-unary", spiffeid.MatchID(d.ID("/frontend")), unaryCall))
	if err != nil {
		t.Fatal(err)
	}
	svc := &echo{}
	addr := startMeshServer(t, svc, mesh.WithIdentity(trading), mesh.WithAuthorizer(authz))

	t.Run("allowed caller", func(t *testing.T) {
		c := dialMesh(t, addr, mesh.WithIdentity(frontend), mesh.WithServerID(d.ID("/trading")))
		if err := checkCall(ctx, c, d.ID("/frontend"), nil); err != nil {
			t.Fatalf("frontend → trading: %v", err)
		}
	})
	t.Run("caller without a rule", func(t *testing.T) {
		before := svc.calls.Load()
		c := dialMesh(t, addr, mesh.WithIdentity(rogue), mesh.WithServerID(d.ID("/trading")))
		_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("rogue → trading: %v, want PermissionDenied", err)
		}
		t.Logf("rogue → trading: %v", err)
		if msg := status.Convert(err).Message(); !strings.Contains(msg, d.ID("/rogue").String()) {
			t.Errorf("denial %q does not name the caller %s", msg, d.ID("/rogue"))
		}
		if n := svc.calls.Load() - before; n != 0 {
			t.Errorf("a denied call reached the handler %d times", n)
		}
	})
	t.Run("server with another identity", func(t *testing.T) {
		before := svc.calls.Load()
		c := dialMesh(t, addr, mesh.WithIdentity(frontend), mesh.WithServerID(d.ID("/payments")))
		_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
		if err == nil {
			t.Fatal("a client expecting /payments reached a server presenting /trading")
		}
		t.Logf("frontend → /trading when expecting /payments: %v", err)
		if n := svc.calls.Load() - before; n != 0 {
			t.Errorf("the call reached the handler %d times", n)
		}
	})
}

func TestMeshUnregisteredWorkloadFailsToStart(t *testing.T) {
	t.Parallel()
	const deadline = 5 * time.Second
	d := spire.Start(t, spire.Config{})
	registerAll(t, d, 0, "/trading")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The agent has the process's entry: refusals below are about selectors.
	workloadSource(ctx, t, d, d.Addr(), "/trading")

	expectFailure := func(t *testing.T, cfg security.WorkloadAPIConfig) {
		t.Helper()
		sctx, scancel := context.WithTimeout(ctx, deadline)
		defer scancel()
		start := time.Now()
		src, err := security.NewWorkloadAPISource(sctx, cfg)
		elapsed := time.Since(start)
		if err == nil {
			src.Close()
			t.Fatal("NewWorkloadAPISource succeeded for an unregistered workload")
		}
		t.Logf("after %v: %v", elapsed.Round(time.Millisecond), err)
		if elapsed > deadline+5*time.Second {
			t.Errorf("returned %v after its %v deadline", elapsed-deadline, deadline)
		}
		if !strings.Contains(err.Error(), strings.TrimPrefix(cfg.Address, "unix://")) {
			t.Errorf("error %q does not name the socket %s", err, cfg.Address)
		}
	}
	t.Run("an ID the agent does not offer", func(t *testing.T) {
		expectFailure(t, security.WorkloadAPIConfig{Address: d.Addr(), ExpectedID: d.ID("/payments")})
	})
	t.Run("an agent with no entry for the workload", func(t *testing.T) {
		expectFailure(t, security.WorkloadAPIConfig{Address: d.AddAgent(t).Addr()})
	})
	t.Run("a process under an unregistered uid", func(t *testing.T) {
		out, code := runWorkloadAs(ctx, t, 4242, d.Addr(), "mesh", deadline)
		t.Logf("exit %d: %s", code, out)
		if code != 3 || !strings.HasPrefix(out, "ERR ") {
			t.Fatalf("unregistered workload: exit %d, output %q; want exit 3 and an error", code, out)
		}
	})
}

// TestMeshCallsAcrossRotations calls for two minutes (30s with -short) with
// 20s SVIDs on both sides: the agent rotates each about every 10s, and no
// call may fail.
func TestMeshCallsAcrossRotations(t *testing.T) {
	t.Parallel()
	const ttl = 20 * time.Second
	run := 2 * time.Minute
	if testing.Short() {
		run = 30 * time.Second
	}
	d := spire.Start(t, spire.Config{})
	registerAll(t, d, ttl, "/trading", "/frontend")
	ctx, cancel := context.WithTimeout(context.Background(), run+2*time.Minute)
	defer cancel()
	trading := workloadSource(ctx, t, d, d.Addr(), "/trading")
	frontend := workloadSource(ctx, t, d, d.Addr(), "/frontend")
	serverRot := watchRotations(t, "trading", trading)
	clientRot := watchRotations(t, "frontend", frontend)

	authz, err := security.Rules(security.Allow("frontend", spiffeid.MatchID(d.ID("/frontend")), unaryCall))
	if err != nil {
		t.Fatal(err)
	}
	svc := &echo{}
	addr := startMeshServer(t, svc, mesh.WithIdentity(trading), mesh.WithAuthorizer(authz))
	c := dialMesh(t, addr, mesh.WithIdentity(frontend), mesh.WithServerID(d.ID("/trading")))
	caller := d.ID("/frontend")

	l := startLoad(t, loadWorkers, loadEvery, func(ctx context.Context, p *peer.Peer) error {
		return checkCall(ctx, c, caller, p)
	})
	select {
	case <-time.After(run):
	case <-ctx.Done():
	}
	l.stop()
	l.report(t, "calls across rotations")
	t.Logf("in %v: server SVID rotated %d times, client SVID %d times; the server saw %d distinct client certificates",
		run, serverRot.count(), clientRot.count(), svc.distinctClientCerts())
	// With a 20s TTL the agent renews at about 10s: expect several.
	min := int(run / ttl)
	if serverRot.count() < min || clientRot.count() < min {
		t.Errorf("rotations seen: server %d, client %d; want at least %d each", serverRot.count(), clientRot.count(), min)
	}
	if svc.distinctClientCerts() < 2 {
		t.Errorf("the server saw %d client certificates: calls never moved to a rotated SVID", svc.distinctClientCerts())
	}
}

// TestMeshAgentRestartUnderLoad restarts the SPIRE agent while calls run:
// the services keep their current SVIDs, calls keep working, and rotation
// resumes once the agent is back.
func TestMeshAgentRestartUnderLoad(t *testing.T) {
	t.Parallel()
	const ttl = 20 * time.Second
	d := spire.Start(t, spire.Config{})
	registerAll(t, d, ttl, "/trading", "/frontend")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	trading := workloadSource(ctx, t, d, d.Addr(), "/trading")
	frontend := workloadSource(ctx, t, d, d.Addr(), "/frontend")
	serverRot := watchRotations(t, "trading", trading)
	clientRot := watchRotations(t, "frontend", frontend)

	addr := startMeshServer(t, &echo{}, mesh.WithIdentity(trading))
	c := dialMesh(t, addr, mesh.WithIdentity(frontend), mesh.WithServerID(d.ID("/trading")))
	caller := d.ID("/frontend")
	l := startLoad(t, loadWorkers, loadEvery, func(ctx context.Context, p *peer.Peer) error {
		return checkCall(ctx, c, caller, p)
	})
	fresh := startLoad(t, 1, 500*time.Millisecond, func(ctx context.Context, p *peer.Peer) error {
		return freshCall(ctx, addr, caller, p, mesh.WithIdentity(frontend), mesh.WithServerID(d.ID("/trading")))
	})

	waitFor(ctx, t, "calls before the restart", func() bool { return l.calls.Load() >= 20 })
	// Down long enough for the sources to notice and for calls and new
	// connections to run on the SVIDs they hold; short of the 20s TTL.
	const down = 5 * time.Second
	callsUp, freshUp := l.calls.Load(), fresh.calls.Load()
	stopped := time.Now()
	d.Agent().Stop(t)
	downTimer := time.NewTimer(down)
	select {
	case <-downTimer.C:
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	callsDown, freshDown := l.calls.Load(), fresh.calls.Load()
	d.Agent().Start(t)
	back := time.Now()
	t.Logf("agent down for %v, healthy again %v after its start", back.Sub(stopped).Round(time.Millisecond), time.Since(stopped.Add(down)).Round(time.Millisecond))
	// The agent issues fresh SVIDs on its return; then it must go on
	// rotating them at the usual pace.
	waitFor(ctx, t, "two SVID rotations on both sides after the agent came back", func() bool {
		return serverRot.since(back) >= 2 && clientRot.since(back) >= 2
	})
	t.Logf("rotations after the restart: first after %v (server) and %v (client); %d and %d rotations in all",
		firstSince(serverRot, back), firstSince(clientRot, back), serverRot.count(), clientRot.count())
	t.Logf("while the agent was down: %d calls on one connection, %d on fresh connections", callsDown-callsUp, freshDown-freshUp)
	if freshDown == freshUp {
		t.Error("no new connection was tried while the agent was down")
	}
	// Keep calling a little past the first rotation on the new agent.
	callsThen := l.calls.Load()
	waitFor(ctx, t, "calls after the rotation", func() bool { return l.calls.Load() >= callsThen+20 })
	l.stop()
	fresh.stop()
	l.report(t, "calls on one connection")
	fresh.report(t, "calls on fresh connections")
	if n := fresh.distinctServerCerts(); n < 2 {
		t.Errorf("fresh connections saw %d server certificates: they never met a rotated server SVID", n)
	}
}

func firstSince(r *rotationWatch, t0 time.Time) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, at := range r.times {
		if at.After(t0) {
			return at.Sub(t0).Round(time.Millisecond)
		}
	}
	return -1
}

// TestMeshSPIREServerOutage stops the SPIRE server for a minute (20s with
// -short) while calls run: workloads keep serving on the SVIDs they hold, a
// new connection and even a new source for a known identity work, and the
// agent is in business again once the server returns.
func TestMeshSPIREServerOutage(t *testing.T) {
	t.Parallel()
	outage := time.Minute
	if testing.Short() {
		outage = 20 * time.Second
	}
	// The SVIDs must outlive the outage: the agent cannot renew them meanwhile.
	const ttl = 3 * time.Minute
	d := spire.Start(t, spire.Config{})
	registerAll(t, d, ttl, "/trading", "/frontend")
	ctx, cancel := context.WithTimeout(context.Background(), outage+3*time.Minute)
	defer cancel()
	trading := workloadSource(ctx, t, d, d.Addr(), "/trading")
	frontend := workloadSource(ctx, t, d, d.Addr(), "/frontend")

	addr := startMeshServer(t, &echo{}, mesh.WithIdentity(trading))
	c := dialMesh(t, addr, mesh.WithIdentity(frontend), mesh.WithServerID(d.ID("/trading")))
	caller := d.ID("/frontend")
	l := startLoad(t, loadWorkers, loadEvery, func(ctx context.Context, p *peer.Peer) error {
		return checkCall(ctx, c, caller, p)
	})
	fresh := startLoad(t, 1, time.Second, func(ctx context.Context, p *peer.Peer) error {
		return freshCall(ctx, addr, caller, p, mesh.WithIdentity(frontend), mesh.WithServerID(d.ID("/trading")))
	})
	waitFor(ctx, t, "calls before the outage", func() bool { return l.calls.Load() >= 20 })

	d.StopServer(t)
	stopped := time.Now()
	t.Logf("SPIRE server stopped for %v", outage)
	half := time.NewTimer(outage / 2)
	select {
	case <-half.C:
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	// A service (re)starting during the outage gets its identity from the
	// agent's cache.
	newFrontend := workloadSource(ctx, t, d, d.Addr(), "/frontend")
	if err := freshCall(ctx, addr, caller, nil, mesh.WithIdentity(newFrontend), mesh.WithServerID(d.ID("/trading"))); err != nil {
		t.Errorf("a client started during the outage: %v", err)
	}
	rest := time.NewTimer(outage - time.Since(stopped))
	select {
	case <-rest.C:
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	callsDuring := l.calls.Load()
	d.StartServer(t)
	t.Logf("SPIRE server back after %v", time.Since(stopped).Round(time.Millisecond))

	// The agent syncs with the returned server: a new entry reaches a workload.
	registerAll(t, d, ttl, "/payments")
	workloadSource(ctx, t, d, d.Addr(), "/payments")
	waitFor(ctx, t, "calls after the outage", func() bool { return l.calls.Load() >= callsDuring+20 })
	l.stop()
	fresh.stop()
	l.report(t, "calls on one connection")
	fresh.report(t, "calls on fresh connections")
}

// TestMeshCARotationWithoutRestart forces a CA rotation through spire-server
// while calls run. The running services pick up the new trust bundle and the
// re-signed SVIDs from the agent, with no restart: new connections keep
// working at every step, including after the old CA is revoked.
func TestMeshCARotationWithoutRestart(t *testing.T) {
	t.Parallel()
	const ttl = 10 * time.Minute // rotation comes from the CA, not from TTL
	d := spire.Start(t, spire.Config{})
	td := d.TrustDomain()
	registerAll(t, d, ttl, "/trading", "/frontend")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	trading := workloadSource(ctx, t, d, d.Addr(), "/trading")
	frontend := workloadSource(ctx, t, d, d.Addr(), "/frontend")

	addr := startMeshServer(t, &echo{}, mesh.WithIdentity(trading))
	c := dialMesh(t, addr, mesh.WithIdentity(frontend), mesh.WithServerID(d.ID("/trading")))
	caller := d.ID("/frontend")
	dialOpts := []mesh.DialOption{mesh.WithIdentity(frontend), mesh.WithServerID(d.ID("/trading"))}
	l := startLoad(t, loadWorkers, loadEvery, func(ctx context.Context, p *peer.Peer) error {
		return checkCall(ctx, c, caller, p)
	})
	fresh := startLoad(t, 1, 250*time.Millisecond, func(ctx context.Context, p *peer.Peer) error {
		return freshCall(ctx, addr, caller, p, dialOpts...)
	})
	both := func(cond func(security.Source) bool) func() bool {
		return func() bool { return cond(trading) && cond(frontend) }
	}
	signer := signedBy

	old := d.X509Authorities(t).Active.ID
	if signer(trading) != old || signer(frontend) != old {
		t.Fatalf("SVIDs signed by %s and %s, want the active authority %s", signer(trading), signer(frontend), old)
	}
	step := time.Now()
	next := d.PrepareX509Authority(t)
	waitFor(ctx, t, "the new CA in both services' bundles", both(func(s security.Source) bool { return bundleHas(s, td, next) }))
	t.Logf("prepared %s: in both bundles after %v", next, time.Since(step).Round(time.Millisecond))

	d.ActivateX509Authority(t, next)
	d.TaintX509Authority(t, old)
	step = time.Now()
	waitFor(ctx, t, "both SVIDs signed by the new CA", func() bool { return signer(trading) == next && signer(frontend) == next })
	t.Logf("activated %s, tainted %s: both SVIDs re-signed after %v", next, old, time.Since(step).Round(time.Millisecond))
	var p peer.Peer
	if err := freshCall(ctx, addr, caller, &p, dialOpts...); err != nil {
		t.Errorf("a new connection with SVIDs from the new CA: %v", err)
	} else if got := authorityKeyID(serverLeaf(&p)); got != next {
		t.Errorf("a new connection met a server certificate signed by %q, want the new CA %s", got, next)
	}

	d.RevokeX509Authority(t, old)
	step = time.Now()
	waitFor(ctx, t, "the old CA gone from both bundles", both(func(s security.Source) bool { return !bundleHas(s, td, old) }))
	t.Logf("revoked %s: gone from both bundles after %v", old, time.Since(step).Round(time.Millisecond))
	if err := freshCall(ctx, addr, caller, nil, dialOpts...); err != nil {
		t.Errorf("a new connection after the old CA was revoked: %v", err)
	}
	callsThen := fresh.calls.Load()
	waitFor(ctx, t, "fresh connections after the revocation", func() bool { return fresh.calls.Load() >= callsThen+5 })
	l.stop()
	fresh.stop()
	l.report(t, "calls on one connection")
	fresh.report(t, "calls on fresh connections")
	if n := fresh.distinctServerCerts(); n < 2 {
		t.Errorf("fresh connections saw %d server certificates, want the old-CA and the new-CA one", n)
	}
}

// TestMeshScheduledCARotation runs the server with a one-minute CA, so SPIRE
// prepares and activates the next CA on its own schedule (at 1/2 and 5/6 of
// the CA lifetime) while calls run: the services follow with no restart.
func TestMeshScheduledCARotation(t *testing.T) {
	t.Parallel()
	// SVIDs no longer than 1/6 of the CA TTL, as SPIRE requires for full lifetimes.
	const caTTL, ttl = time.Minute, 10 * time.Second
	d := spire.Start(t, spire.Config{CATTL: caTTL, DefaultX509SVIDTTL: ttl})
	registerAll(t, d, ttl, "/trading", "/frontend")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	trading := workloadSource(ctx, t, d, d.Addr(), "/trading")
	frontend := workloadSource(ctx, t, d, d.Addr(), "/frontend")

	addr := startMeshServer(t, &echo{}, mesh.WithIdentity(trading))
	c := dialMesh(t, addr, mesh.WithIdentity(frontend), mesh.WithServerID(d.ID("/trading")))
	caller := d.ID("/frontend")
	dialOpts := []mesh.DialOption{mesh.WithIdentity(frontend), mesh.WithServerID(d.ID("/trading"))}
	l := startLoad(t, loadWorkers, loadEvery, func(ctx context.Context, p *peer.Peer) error {
		return checkCall(ctx, c, caller, p)
	})
	fresh := startLoad(t, 1, 250*time.Millisecond, func(ctx context.Context, p *peer.Peer) error {
		return freshCall(ctx, addr, caller, p, dialOpts...)
	})

	start := time.Now()
	first := signedBy(trading)
	waitFor(ctx, t, "both SVIDs signed by the next CA", func() bool {
		s, f := signedBy(trading), signedBy(frontend)
		return s != first && s != "" && s == f
	})
	next := signedBy(trading)
	t.Logf("SPIRE rotated its CA on schedule: SVIDs from %s after %v", next, time.Since(start).Round(time.Millisecond))
	if !bundleHas(trading, d.TrustDomain(), next) || !bundleHas(frontend, d.TrustDomain(), next) {
		t.Errorf("the bundles lack the new CA %s", next)
	}
	callsThen := fresh.calls.Load()
	waitFor(ctx, t, "fresh connections on the new CA", func() bool { return fresh.calls.Load() >= callsThen+10 })
	l.stop()
	fresh.stop()
	l.report(t, "calls on one connection")
	fresh.report(t, "calls on fresh connections")
}
