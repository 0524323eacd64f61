package trading_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/examples/rec/recpb"
	"github.com/gridmesh/gridmesh/examples/rec/rectest"
	"github.com/gridmesh/gridmesh/examples/rec/trading"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var solar = &recpb.Market{EnergySource: "solar", Vintage: 2024}

func order(id, who string, side recpb.Side, price, mwh int64) *recpb.PlaceOrderRequest {
	return &recpb.PlaceOrderRequest{OrderId: id, Participant: who, Market: solar, Side: side, PriceCents: price, Mwh: mwh}
}

type fill struct {
	Sell  string
	MWh   int64
	Price int64
}

func fills(o *recpb.Order) []fill {
	var out []fill
	for _, t := range o.GetFills() {
		out = append(out, fill{t.GetSellOrderId(), t.GetMwh(), t.GetPriceCents()})
	}
	return out
}

func TestPriceTimePriority(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := rectest.New(t)
	p.Seed(t, solar, 1_000_000, 100, "a", "b", "c", "buyer")
	for _, o := range []*recpb.PlaceOrderRequest{
		order("s1", "a", recpb.Side_SELL, 1500, 5), // worse price, first in time
		order("s2", "b", recpb.Side_SELL, 1450, 3),
		order("s3", "c", recpb.Side_SELL, 1450, 4), // same price as s2, later
		order("s4", "a", recpb.Side_SELL, 1600, 9), // beyond the buyer's limit
	} {
		if _, err := p.Trading.PlaceOrder(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	got, err := p.Trading.PlaceOrder(ctx, order("b1", "buyer", recpb.Side_BUY, 1520, 10))
	if err != nil {
		t.Fatal(err)
	}
	want := []fill{{"s2", 3, 1450}, {"s3", 4, 1450}, {"s1", 3, 1500}}
	if diff := cmp.Diff(want, fills(got)); diff != "" {
		t.Errorf("fills (-want +got):\n%s", diff)
	}
	if got.GetStatus() != recpb.OrderStatus_FILLED || got.GetFilledMwh() != 10 {
		t.Errorf("buy order: %v with %d MWh filled, want FILLED with 10", got.GetStatus(), got.GetFilledMwh())
	}
	book, err := p.Trading.Book(ctx, &recpb.BookRequest{Market: solar})
	if err != nil {
		t.Fatal(err)
	}
	wantAsks := []string{"1500:2", "1600:9"}
	var asks []string
	for _, l := range book.GetAsks() {
		asks = append(asks, fmt.Sprintf("%d:%d", l.GetPriceCents(), l.GetMwh()))
	}
	if diff := cmp.Diff(wantAsks, asks); diff != "" || len(book.GetBids()) != 0 {
		t.Errorf("book asks (-want +got):\n%s bids: %v", diff, book.GetBids())
	}
}

func TestOwnOrdersDoNotMatch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := rectest.New(t)
	p.Seed(t, solar, 1_000_000, 100, "a")
	if _, err := p.Trading.PlaceOrder(ctx, order("s1", "a", recpb.Side_SELL, 1000, 5)); err != nil {
		t.Fatal(err)
	}
	got, err := p.Trading.PlaceOrder(ctx, order("b1", "a", recpb.Side_BUY, 2000, 5))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.GetFills()) != 0 || got.GetStatus() != recpb.OrderStatus_OPEN {
		t.Errorf("a's buy matched a's own sell: %v", got)
	}
}

func TestRepeatsAndRejections(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := rectest.New(t)
	p.Seed(t, solar, 10_000, 10, "a", "b")

	// Not enough cash: rejected, and a repeat gets the same answer even
	// after the participant could afford it.
	r, err := p.Trading.PlaceOrder(ctx, order("b1", "a", recpb.Side_BUY, 2000, 6))
	if err != nil || r.GetStatus() != recpb.OrderStatus_REJECTED {
		t.Fatalf("over-budget buy: %v, %v; want REJECTED", r.GetStatus(), err)
	}
	// Not enough MWh.
	if r, err := p.Trading.PlaceOrder(ctx, order("s1", "b", recpb.Side_SELL, 100, 11)); err != nil || r.GetStatus() != recpb.OrderStatus_REJECTED {
		t.Fatalf("oversized sell: %v, %v; want REJECTED", r.GetStatus(), err)
	}
	// A repeat returns the order as it stands, without a second hold.
	first, err := p.Trading.PlaceOrder(ctx, order("s2", "b", recpb.Side_SELL, 100, 10))
	if err != nil {
		t.Fatal(err)
	}
	again, err := p.Trading.PlaceOrder(ctx, order("s2", "b", recpb.Side_SELL, 100, 10))
	if err != nil || again.GetSeq() != first.GetSeq() {
		t.Fatalf("repeat: seq %d, %v; want seq %d", again.GetSeq(), err, first.GetSeq())
	}
	// The same id for another order is refused.
	if _, err := p.Trading.PlaceOrder(ctx, order("s2", "b", recpb.Side_SELL, 101, 10)); status.Code(err) != codes.AlreadyExists {
		t.Errorf("different order under a used id: %v, want AlreadyExists", err)
	}
	// An order whose hold was released before it was accepted is refused,
	// not accepted without cover.
	if _, err := p.Registry.Release(ctx, &recpb.ReleaseRequest{HoldId: "s3"}); err != nil {
		t.Fatal(err)
	}
	if r, err := p.Trading.PlaceOrder(ctx, order("s3", "b", recpb.Side_SELL, 100, 1)); err != nil || r.GetStatus() != recpb.OrderStatus_REJECTED {
		t.Errorf("order after its hold was released: %v, %v; want REJECTED", r.GetStatus(), err)
	}
	h, err := p.Registry.Holdings(ctx, &recpb.HoldingsRequest{Owner: "b"})
	if err != nil || len(h.GetHoldings()) != 1 || h.GetHoldings()[0].GetHeldMwh() != 10 {
		t.Errorf("b's holdings after a repeated sell: %v, %v; want 10 MWh held once", h, err)
	}
	// Cancelling closes the order and journals it for settlement.
	c, err := p.Trading.CancelOrder(ctx, &recpb.CancelOrderRequest{OrderId: "s2", Participant: "b"})
	if err != nil || c.GetStatus() != recpb.OrderStatus_CANCELLED {
		t.Fatalf("cancel: %v, %v", c.GetStatus(), err)
	}
	ev, err := p.Trading.Events(ctx, &recpb.EventsRequest{})
	if err != nil || len(ev.GetEvents()) != 1 || ev.GetEvents()[0].GetClosed().GetOrderId() != "s2" {
		t.Errorf("journal after a cancel: %v, %v; want one closed event for s2", ev, err)
	}
	if _, err := p.Trading.CancelOrder(ctx, &recpb.CancelOrderRequest{OrderId: "s2", Participant: "a"}); status.Code(err) != codes.NotFound {
		t.Errorf("cancel by someone else: %v, want NotFound", err)
	}
}

// TestTwoInstancesOneMarket runs two instances on two connections to one
// journal file, as two processes would during a failover, both matching the
// same market at once: no order may fill beyond its size and both sides of
// every trade must agree.
func TestTwoInstancesOneMarket(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := rectest.New(t)
	var names []string
	for i := range 8 {
		names = append(names, fmt.Sprintf("p%d", i))
	}
	p.Seed(t, solar, 10_000_000, 1000, names...)
	second := p.NewTrading(t, "trading-2", rectest.Open(t, p.Dir, "trading", trading.Schema...))
	instances := []*trading.Server{p.Trading, second}

	var wg sync.WaitGroup
	errs := make(chan error, 400)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				side := recpb.Side_BUY
				if (w+i)%2 == 0 {
					side = recpb.Side_SELL
				}
				o := order(fmt.Sprintf("o-%d-%d", w, i), names[w], side, 1400+int64((w*7+i*13)%200), 1+int64(i%5))
				if _, err := instances[(w+i)%2].PlaceOrder(ctx, o); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("place: %v", err)
	}

	st, err := p.Trading.Stats(ctx, &recpb.TradingStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetOrdersAccepted() != 320 || st.GetTrades() == 0 {
		t.Fatalf("stats %v: want 320 accepted orders and some trades", st)
	}
	filled := map[string]int64{}
	var after int64
	for {
		ev, err := p.Trading.Events(ctx, &recpb.EventsRequest{AfterSeq: after, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if len(ev.GetEvents()) == 0 {
			break
		}
		for _, e := range ev.GetEvents() {
			if e.GetSeq() != after+1 {
				t.Fatalf("journal seq %d after %d: a gap", e.GetSeq(), after)
			}
			after = e.GetSeq()
			if tr := e.GetTrade(); tr != nil {
				filled[tr.GetBuyOrderId()] += tr.GetMwh()
				filled[tr.GetSellOrderId()] += tr.GetMwh()
			}
		}
	}
	for id, n := range filled {
		o, err := p.Trading.GetOrder(ctx, &recpb.GetOrderRequest{OrderId: id})
		if err != nil {
			t.Fatal(err)
		}
		if o.GetFilledMwh() != n || n > o.GetMwh() {
			t.Errorf("order %s: %d MWh, filled %d, trades say %d", id, o.GetMwh(), o.GetFilledMwh(), n)
		}
	}
}

// TestReconcileReleasesOrphanHolds places holds whose orders never come,
// as when an instance dies between the hold and the commit and the client
// gives up: the reconciler voids the order ids and releases the holds, and
// a late repeat of the order is rejected rather than accepted uncovered.
func TestReconcileReleasesOrphanHolds(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := rectest.New(t)
	p.Seed(t, solar, 100_000, 10, "a", "b")
	if _, err := p.Accounts.Hold(ctx, &recpb.CashHoldRequest{HoldId: "lost-buy", Participant: "a", Cents: 5000}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Registry.Hold(ctx, &recpb.HoldRequest{HoldId: "lost-sell", Owner: "b", Market: solar, Mwh: 4}); err != nil {
		t.Fatal(err)
	}
	live, err := p.Trading.PlaceOrder(ctx, order("live", "b", recpb.Side_SELL, 2000, 3))
	if err != nil || live.GetStatus() != recpb.OrderStatus_OPEN {
		t.Fatalf("live order: %v, %v", live, err)
	}

	if n, err := p.Trading.Reconcile(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("reconcile of young holds: %d, %v; want 0", n, err)
	}
	n, err := p.Trading.Reconcile(ctx, -time.Second) // every hold, however young
	if err != nil || n != 2 {
		t.Fatalf("reconcile: %d, %v; want the 2 orphan holds released", n, err)
	}
	if n, err := p.Trading.Reconcile(ctx, -time.Second); err != nil || n != 0 {
		t.Errorf("second reconcile: %d, %v; want 0", n, err)
	}
	acct, _ := p.Accounts.Balance(ctx, &recpb.BalanceRequest{Participant: "a"})
	h, _ := p.Registry.Holdings(ctx, &recpb.HoldingsRequest{Owner: "b"})
	if acct.GetHeldCents() != 0 || h.GetHoldings()[0].GetHeldMwh() != 3 {
		t.Errorf("after reconcile: a holds %d cents, b holds %d MWh; want 0 and 3 (the live order)", acct.GetHeldCents(), h.GetHoldings()[0].GetHeldMwh())
	}
	late, err := p.Trading.PlaceOrder(ctx, order("lost-buy", "a", recpb.Side_BUY, 1000, 5))
	if err != nil || late.GetStatus() != recpb.OrderStatus_REJECTED || late.GetRejectReason() != trading.VoidReason {
		t.Errorf("late repeat of a voided order: %v, %v; want REJECTED (voided)", late, err)
	}
	st, err := p.Trading.Stats(ctx, &recpb.TradingStatsRequest{})
	if err != nil || st.GetOrdersVoided() != 2 || st.GetOrdersRejected() != 0 || st.GetOrdersAccepted() != 1 {
		t.Errorf("stats %v, %v: want 1 accepted, 0 rejected, 2 voided", st, err)
	}
}
