package platform_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gridmesh/gridmesh/examples/rec/platform"
	"github.com/gridmesh/gridmesh/examples/rec/recpb"
	"github.com/gridmesh/gridmesh/examples/rec/rectest"
	"github.com/gridmesh/gridmesh/examples/rec/settlement"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestAuditCatchesBrokenBooks shows the audit is not vacuous: it passes on
// honest books and names the invariant when cash appears from nowhere, a
// transfer is lost, or an acknowledged order is missing.
func TestAuditCatchesBrokenBooks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := rectest.New(t)
	seed := platform.NewSeed(4, 100_000, 20)
	seed.Markets = seed.Markets[:1]
	m := seed.Markets[0]
	p.Seed(t, m, seed.DepositCents, seed.LotMWh, seed.Participants...)
	// rectest.Seed names lots its own way; the audit only counts MWh.
	var acks []platform.Ack
	for i, o := range []*recpb.PlaceOrderRequest{
		{Participant: "p01", Side: recpb.Side_SELL, PriceCents: 1000, Mwh: 5},
		{Participant: "p02", Side: recpb.Side_BUY, PriceCents: 1100, Mwh: 3},
		{Participant: "p03", Side: recpb.Side_BUY, PriceCents: 900, Mwh: 2},
	} {
		o.OrderId, o.Market = fmt.Sprintf("o%d", i), m
		r, err := p.Trading.PlaceOrder(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		acks = append(acks, platform.Ack{OrderID: r.GetOrderId(), Status: r.GetStatus(), Filled: r.GetFilledMwh(), Fills: len(r.GetFills())})
	}
	db := rectest.Open(t, p.Dir, "settlement", settlement.Schema...)
	s := settlement.New(db, settlement.Config{Trading: p.TradingC, Registry: p.RegistryC, Accounts: p.AccountsC, Poll: 5 * time.Millisecond})
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(rctx) }()
	defer func() {
		stop()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	}()
	op := &platform.Operator{Registry: p.RegistryC, Accounts: p.AccountsC, Trading: p.TradingC, Settlement: rectest.SettlementClient{S: s}}

	failed := func(acks []platform.Ack) []string {
		t.Helper()
		r, err := platform.Audit(ctx, op, seed, acks, 0)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, c := range r.Checks {
			if !c.OK {
				names = append(names, c.Name)
			}
		}
		return names
	}
	if f := failed(acks); len(f) != 0 {
		t.Fatalf("honest books failed %v", f)
	}
	if f := failed(append(acks, platform.Ack{OrderID: "o-lost", Status: recpb.OrderStatus_OPEN})); !contains(f, "no acknowledged order lost") {
		t.Errorf("a missing acknowledged order: failed %v", f)
	}
	if _, err := p.CashDB.ExecContext(ctx, `UPDATE accounts SET balance = balance + 1 WHERE participant = 'p04'`); err != nil {
		t.Fatal(err)
	}
	if f := failed(acks); !contains(f, "cash conserved") || !contains(f, "each participant = seed + trades") {
		t.Errorf("a cent from nowhere: failed %v", f)
	}
	if _, err := p.RegistryDB.ExecContext(ctx, `DELETE FROM transfers`); err != nil {
		t.Fatal(err)
	}
	if f := failed(acks); !contains(f, "ownership moved once per trade") {
		t.Errorf("a lost transfer record: failed %v", f)
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
