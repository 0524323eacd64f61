package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/gridmesh/gridmesh/examples/rec/load"
	"github.com/gridmesh/gridmesh/examples/rec/platform"
	"github.com/gridmesh/gridmesh/examples/rec/policy"
	"github.com/gridmesh/gridmesh/internal/testutil/consul"
)

// TestPlatformOnConsul runs the platform on a real Consul agent, as
// `make demo CONSUL=1` does: every SVID from Consul's Connect CA, every
// target consul:///<service> through the catalog, every server registered
// with a TTL health check and authorized by the matrix written as Consul
// L7 intentions. Under load it rotates the Connect CA, kills trading-1
// (SIGKILL) and restarts it once Consul has marked it critical. Then:
// every order accounted for, every invariant of the audit holds, every
// pair of the matrix (gRPC methods and gateway routes, every workload as
// caller) answered as written, the catalog went from two trading
// instances to one and back, and the operator's leaf moved to the new
// root (the test logs when).
func TestPlatformOnConsul(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole platform as processes")
	}
	consulBin, err := consul.Binary()
	if err != nil {
		t.Fatal(err)
	}
	bin := build(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	p, err := platform.Start(ctx, platform.Config{Bin: bin, Dir: dir, Trading: 2, ConsulBin: consulBin})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		p.Stop()
		if t.Failed() {
			logTails(t, dir, "consul", "trading-1", "trading-2", "settlement", "gateway", "registry", "accounts")
		}
	}()
	op, err := p.Operator(ctx, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()
	seed := platform.NewSeed(20, 10_000_000, 500)
	if err := seed.Apply(ctx, op); err != nil {
		t.Fatal(err)
	}
	portal, err := p.Client(ctx, policy.Portal, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer portal.Close()

	tradingCount := func(n int) func() bool {
		return func() bool {
			list, err := p.ConsulInstances(ctx, policy.Trading)
			return err == nil && len(list) == n
		}
	}
	if !tradingCount(2)() {
		t.Fatal("Consul does not list two passing trading instances after start")
	}
	const orders = 1200
	var (
		chaos     []string
		chaosE    error
		rotatedAt time.Time
		onNewRoot <-chan time.Duration
		done      = make(chan struct{})
		start     = time.Now()
	)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	go func() {
		defer close(done)
		step := func(what string) { chaos = append(chaos, fmt.Sprintf("%5.1fs %s", time.Since(start).Seconds(), what)) }
		var root string
		if root, chaosE = p.RotateConsulCA(ctx); chaosE != nil {
			return
		}
		rotatedAt = time.Now()
		onNewRoot = watchNewRoot(ctx, p, op, rotatedAt)
		step("Connect CA rotated, new root " + root)
		if chaosE = waitFor(loadCtx, func() bool { return time.Since(start) > 2*time.Second }); chaosE != nil {
			return
		}
		if chaosE = p.Kill("trading-1"); chaosE != nil {
			return
		}
		step("trading-1 killed")
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		defer wcancel()
		if chaosE = waitFor(wctx, tradingCount(1)); chaosE != nil {
			chaosE = fmt.Errorf("Consul still lists two passing trading instances: %w", chaosE)
			return
		}
		step("Consul lists one trading instance")
		if chaosE = p.Restart(ctx, "trading-1"); chaosE != nil {
			return
		}
		if chaosE = waitFor(wctx, tradingCount(2)); chaosE != nil {
			chaosE = fmt.Errorf("trading-1 not passing again in Consul: %w", chaosE)
			return
		}
		step("trading-1 restarted, Consul lists two again")
	}()
	res, err := load.Run(loadCtx, load.Config{
		URL: p.GatewayURL, Orders: orders, Concurrency: 16, Client: portal.HTTP,
		Participants: seed.Participants, Markets: seed.Markets, CancelShare: 0.05, RetryFor: 90 * time.Second,
	})
	<-done
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if chaosE != nil {
		t.Fatalf("rotating, killing and restarting: %v", chaosE)
	}
	t.Logf("chaos:\n  %s", strings.Join(chaos, "\n  "))
	t.Logf("load:\n%s", res.Summary())
	if res.Started != orders || res.Invalid != 0 || res.Unknown != 0 {
		t.Errorf("orders: %d started, %d invalid, %d with unknown outcome; want %d, 0, 0", res.Started, res.Invalid, res.Unknown, orders)
	}

	_, pairs := auditAndSweep(ctx, t, p, op, seed, res)
	if got, want := len(pairs), len(policy.Workloads)*(len(policy.Matrix)+len(policy.GatewayRoutes)); got != want {
		t.Errorf("swept %d pairs, want every workload × every method and route: %d", got, want)
	}
	if crashed := p.Exited(); len(crashed) > 0 {
		t.Errorf("processes exited on their own: %v", crashed)
	}

	select {
	case after := <-onNewRoot:
		t.Logf("the operator's leaf on the new root %v after the rotation", after.Round(time.Millisecond))
	case <-time.After(40*time.Second - time.Since(rotatedAt)):
		t.Error("the operator's leaf is still signed by the old root 40s after the rotation")
	}
}

// watchNewRoot sends on the returned channel how long after rotatedAt the
// operator's leaf was first signed by the active Connect CA root, checking
// on every change of its source, until ctx ends.
func watchNewRoot(ctx context.Context, p *platform.Platform, op *platform.Operator, rotatedAt time.Time) <-chan time.Duration {
	src := op.Node.Src.(interface{ Changed() <-chan struct{} })
	out := make(chan time.Duration, 1)
	go func() {
		for {
			changed := src.Changed()
			svid, err := op.Node.Src.GetX509SVID()
			if err == nil {
				if onNew, err := p.SignedByActiveConsulRoot(ctx, svid.Certificates[0]); err == nil && onNew {
					out <- time.Since(rotatedAt)
					return
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-changed:
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return out
}
