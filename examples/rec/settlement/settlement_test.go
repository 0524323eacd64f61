package settlement_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/gridmesh/gridmesh/examples/rec/recpb"
	"github.com/gridmesh/gridmesh/examples/rec/rectest"
	"github.com/gridmesh/gridmesh/examples/rec/settlement"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var wind = &recpb.Market{EnergySource: "wind", Vintage: 2025}

// settle runs settlement until it has applied the whole journal.
func settle(t *testing.T, ctx context.Context, p *rectest.Platform, s *settlement.Server) {
	t.Helper()
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(rctx) }()
	defer func() {
		stop()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	}()
	for {
		ts, err := p.Trading.Stats(ctx, &recpb.TradingStatsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		ss, err := s.Stats(ctx, &recpb.SettlementStatsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if ss.GetCursor() == ts.GetLastSeq() {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("settlement stuck at %d of %d", ss.GetCursor(), ts.GetLastSeq())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

type snapshot struct {
	Registry *recpb.RegistryTotals
	Accounts *recpb.AccountsTotals
	Balances []*recpb.Account
}

func snap(t *testing.T, ctx context.Context, p *rectest.Platform, who []string) snapshot {
	t.Helper()
	var s snapshot
	var err error
	if s.Registry, err = p.Registry.Totals(ctx, &recpb.TotalsRequest{}); err != nil {
		t.Fatal(err)
	}
	if s.Accounts, err = p.Accounts.Totals(ctx, &recpb.TotalsRequest{}); err != nil {
		t.Fatal(err)
	}
	for _, w := range who {
		a, err := p.Accounts.Balance(ctx, &recpb.BalanceRequest{Participant: w})
		if err != nil {
			t.Fatal(err)
		}
		s.Balances = append(s.Balances, a)
	}
	return s
}

// TestSettlesOnceThroughReplays settles a session, then replays the whole
// journal, as a settlement killed before it saved its cursor would: nothing
// may move a second time.
func TestSettlesOnceThroughReplays(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := rectest.New(t)
	who := []string{"a", "b", "c", "d"}
	p.Seed(t, wind, 1_000_000, 50, who...)
	orders := []*recpb.PlaceOrderRequest{
		{OrderId: "s1", Participant: "a", Side: recpb.Side_SELL, PriceCents: 1000, Mwh: 10},
		{OrderId: "s2", Participant: "b", Side: recpb.Side_SELL, PriceCents: 1100, Mwh: 10},
		{OrderId: "b1", Participant: "c", Side: recpb.Side_BUY, PriceCents: 1200, Mwh: 15}, // fills s1, 5 of s2: pays 10×1000 + 5×1100
		{OrderId: "b2", Participant: "d", Side: recpb.Side_BUY, PriceCents: 900, Mwh: 5},   // rests
	}
	for _, o := range orders {
		o.Market = wind
		if _, err := p.Trading.PlaceOrder(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.Trading.CancelOrder(ctx, &recpb.CancelOrderRequest{OrderId: "b2", Participant: "d"}); err != nil {
		t.Fatal(err)
	}

	db := rectest.Open(t, p.Dir, "settlement", settlement.Schema...)
	s := settlement.New(db, settlement.Config{Trading: p.TradingC, Registry: p.RegistryC, Accounts: p.AccountsC, Poll: 5 * time.Millisecond})
	settle(t, ctx, p, s)
	first := snap(t, ctx, p, who)

	wantCash := map[string]int64{"a": 1_000_000 + 10_000, "b": 1_000_000 + 5_500, "c": 1_000_000 - 15_500, "d": 1_000_000}
	for _, a := range first.Balances {
		if a.GetBalanceCents() != wantCash[a.GetParticipant()] || a.GetHeldCents() != 0 {
			t.Errorf("%s: %d cents (%d held), want %d (0 held)", a.GetParticipant(), a.GetBalanceCents(), a.GetHeldCents(), wantCash[a.GetParticipant()])
		}
	}
	if r := first.Registry; r.GetTotalMwh() != 200 || r.GetTransfers() != 2 || r.GetTransferredMwh() != 15 || r.GetHeldMwh() != 5 {
		t.Errorf("registry totals %v: want 200 MWh, 2 transfers of 15 MWh, 5 MWh still held by s2", r)
	}
	if a := first.Accounts; a.GetTotalCents() != 4_000_000 || a.GetCaptures() != 2 {
		t.Errorf("accounts totals %v: want 4,000,000 cents and 2 captures", a)
	}

	// Replay everything.
	if _, err := db.ExecContext(ctx, `UPDATE cursor SET seq = 0`); err != nil {
		t.Fatal(err)
	}
	s2 := settlement.New(db, settlement.Config{Trading: p.TradingC, Registry: p.RegistryC, Accounts: p.AccountsC, Poll: 5 * time.Millisecond})
	settle(t, ctx, p, s2)
	if diff := cmp.Diff(first, snap(t, ctx, p, who), protocmp.Transform(), protocmp.IgnoreFields(&recpb.RegistryTotals{}, "idempotency_keys"), protocmp.IgnoreFields(&recpb.AccountsTotals{}, "idempotency_keys")); diff != "" {
		t.Errorf("replaying the journal changed the books (-first +replayed):\n%s", diff)
	}
	st, err := s2.GetTrade(ctx, &recpb.GetTradeRequest{TradeId: fmt.Sprintf("t%d", 1)})
	if err != nil || !st.GetSettled() {
		t.Errorf("GetTrade(t1) = %v, %v; want settled", st, err)
	}
}
