// Package e2e runs the whole REC platform as processes and trades through
// it while processes are killed: the fault-tolerance test of issue 8.
package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gridmesh/gridmesh/examples/rec/load"
	"github.com/gridmesh/gridmesh/examples/rec/platform"
	"github.com/gridmesh/gridmesh/examples/rec/policy"
	"github.com/gridmesh/gridmesh/examples/rec/recpb"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// build compiles meshd and the REC binaries into a temporary directory.
func build(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not at %s: %v", root, err)
	}
	bin := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin+"/", "./cmd/meshd",
		"./examples/rec/cmd/registry", "./examples/rec/cmd/accounts", "./examples/rec/cmd/trading",
		"./examples/rec/cmd/settlement", "./examples/rec/cmd/gateway")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// waitFor polls cond every 50ms until it holds or ctx ends.
func waitFor(ctx context.Context, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// TestKillTradingAndSettlementUnderLoad places 2,000 orders from 16
// concurrent participants while SVIDs live 10 seconds and, in turn,
// trading-1, settlement and trading-2 are killed with SIGKILL and
// restarted. Then: no acknowledged order lost or changed, no order placed
// twice, every trade settled exactly once on both legs, MWh and cash
// conserved overall and per participant, holds equal to the open orders,
// and every pair of the authorization matrix answered as written.
//
// It runs twice: with static targets and in-code policy, and on meshd's
// xDS (servers registered with meshd, xds:/// targets, meshd's RBAC).
func TestKillTradingAndSettlementUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole platform as processes")
	}
	bin := build(t)
	for _, xds := range []bool{false, true} {
		name := "static"
		if xds {
			name = "xds"
		}
		t.Run(name, func(t *testing.T) { killUnderLoad(t, bin, xds) })
	}
}

func killUnderLoad(t *testing.T, bin string, xds bool) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	p, err := platform.Start(ctx, platform.Config{Bin: bin, Dir: dir, Trading: 2, SVIDTTL: 10 * time.Second, XDS: xds})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		p.Stop()
		if t.Failed() {
			logTails(t, dir, "trading-1", "trading-2", "settlement", "gateway", "registry", "accounts")
		}
	}()
	op, err := p.Operator(ctx, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()
	rctx, stopRotations := context.WithCancel(ctx)
	defer stopRotations()
	rotations := op.WatchRotations(rctx)
	seed := platform.NewSeed(20, 10_000_000, 500)
	if err := seed.Apply(ctx, op); err != nil {
		t.Fatal(err)
	}

	portal, err := p.Client(ctx, policy.Portal, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer portal.Close()
	client := portal.HTTP

	const orders = 2000
	var (
		wg     sync.WaitGroup
		chaos  []string
		chaosE error
		start  = time.Now()
	)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	accepted := func(n int64) func() bool {
		return func() bool {
			st, err := op.Trading.Stats(ctx, &recpb.TradingStatsRequest{})
			return err == nil && st.GetOrdersAccepted()+st.GetOrdersRejected() >= n
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for _, step := range []struct {
			after int64
			proc  string
		}{{300, "trading-1"}, {800, "settlement"}, {1300, "trading-2"}} {
			if chaosE = waitFor(loadCtx, accepted(step.after)); chaosE != nil {
				return
			}
			if chaosE = p.Kill(step.proc); chaosE != nil {
				return
			}
			chaos = append(chaos, fmt.Sprintf("%5.1fs %s killed after %d orders", time.Since(start).Seconds(), step.proc, step.after))
			select {
			case <-loadCtx.Done():
			case <-time.After(2 * time.Second):
			}
			if chaosE = p.Restart(ctx, step.proc); chaosE != nil {
				return
			}
			chaos = append(chaos, fmt.Sprintf("%5.1fs %s restarted", time.Since(start).Seconds(), step.proc))
		}
	}()
	res, err := load.Run(loadCtx, load.Config{
		URL: p.GatewayURL, Orders: orders, Concurrency: 16, Client: client,
		Participants: seed.Participants, Markets: seed.Markets, CancelShare: 0.05, RetryFor: 90 * time.Second,
	})
	wg.Wait()
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if chaosE != nil {
		t.Fatalf("killing and restarting: %v", chaosE)
	}
	t.Logf("chaos:\n  %s", strings.Join(chaos, "\n  "))
	t.Logf("load:\n%s", res.Summary())
	if m, err := p.GatewayMesh(ctx, op); err == nil {
		t.Logf("mesh at the gateway: %s", m)
	}
	if len(chaos) != 6 {
		t.Errorf("only %d of 6 kill/restart steps ran before the load ended", len(chaos))
	}
	if res.Started != orders || res.Invalid != 0 || res.Unknown != 0 {
		t.Errorf("orders: %d started, %d invalid, %d with unknown outcome; want %d, 0, 0", res.Started, res.Invalid, res.Unknown, orders)
	}

	report, _ := auditAndSweep(ctx, t, p, op, seed, res)
	if crashed := p.Exited(); len(crashed) > 0 {
		t.Errorf("processes exited on their own: %v", crashed)
	}
	stopRotations()
	t.Logf("the operator's SVID rotated %d times during the run", rotations())
	if rotations() < 2 {
		t.Errorf("SVIDs rotated %d times during the run, want at least 2 (10s SVIDs rotate every 5s)", rotations())
	}
	if report.Trading.GetMarketMoves() == 0 {
		t.Errorf("no market moved between trading instances: the kills did not exercise failover")
	}
}
