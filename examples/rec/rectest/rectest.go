// Package rectest runs the REC services in process for tests: the real
// registry, accounts and trading servers on temporary databases, called
// directly (no network) through their client interfaces.
package rectest

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/gridmesh/gridmesh/examples/rec/accounts"
	"github.com/gridmesh/gridmesh/examples/rec/recdb"
	"github.com/gridmesh/gridmesh/examples/rec/recpb"
	"github.com/gridmesh/gridmesh/examples/rec/registry"
	"github.com/gridmesh/gridmesh/examples/rec/settlement"
	"github.com/gridmesh/gridmesh/examples/rec/trading"
)

// Open opens a database in dir/name.db with schema, closed at the end of
// the test.
func Open(t testing.TB, dir, name string, schema ...string) *sql.DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	db, err := recdb.Open(ctx, filepath.Join(dir, name+".db"), schema...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// Platform is the services in process.
type Platform struct {
	Dir                string
	RegistryDB, CashDB *sql.DB
	TradingDB          *sql.DB
	Registry           *registry.Server
	Accounts           *accounts.Server
	RegistryC          recpb.RegistryClient
	AccountsC          recpb.AccountsClient
	Trading            *trading.Server
	TradingC           recpb.TradingClient
}

// New starts registry, accounts and one trading instance in t.TempDir().
func New(t testing.TB) *Platform {
	dir := t.TempDir()
	p := &Platform{Dir: dir}
	p.RegistryDB = Open(t, dir, "registry", registry.Schema...)
	p.CashDB = Open(t, dir, "accounts", accounts.Schema...)
	p.TradingDB = Open(t, dir, "trading", trading.Schema...)
	p.Registry = registry.New(p.RegistryDB)
	p.Accounts = accounts.New(p.CashDB)
	p.RegistryC = RegistryClient{p.Registry}
	p.AccountsC = AccountsClient{p.Accounts}
	p.Trading = p.NewTrading(t, "trading-1", p.TradingDB)
	p.TradingC = TradingClient{p.Trading}
	return p
}

// NewTrading returns another trading instance on db (open the same file
// again to act as another process).
func (p *Platform) NewTrading(t testing.TB, name string, db *sql.DB) *trading.Server {
	return trading.New(db, trading.Config{Instance: name, Accounts: p.AccountsC, Registry: p.RegistryC})
}

// RegistryClient calls a registry server directly.
type RegistryClient struct{ S *registry.Server }

func (c RegistryClient) Issue(ctx context.Context, in *recpb.IssueRequest, _ ...grpc.CallOption) (*recpb.Lot, error) {
	return c.S.Issue(ctx, in)
}
func (c RegistryClient) Hold(ctx context.Context, in *recpb.HoldRequest, _ ...grpc.CallOption) (*recpb.HoldReply, error) {
	return c.S.Hold(ctx, in)
}
func (c RegistryClient) Release(ctx context.Context, in *recpb.ReleaseRequest, _ ...grpc.CallOption) (*recpb.ReleaseReply, error) {
	return c.S.Release(ctx, in)
}
func (c RegistryClient) Transfer(ctx context.Context, in *recpb.TransferRequest, _ ...grpc.CallOption) (*recpb.TransferReply, error) {
	return c.S.Transfer(ctx, in)
}
func (c RegistryClient) Retire(ctx context.Context, in *recpb.RetireRequest, _ ...grpc.CallOption) (*recpb.RetireReply, error) {
	return c.S.Retire(ctx, in)
}
func (c RegistryClient) Holdings(ctx context.Context, in *recpb.HoldingsRequest, _ ...grpc.CallOption) (*recpb.HoldingsReply, error) {
	return c.S.Holdings(ctx, in)
}
func (c RegistryClient) ListHolds(ctx context.Context, in *recpb.ListHoldsRequest, _ ...grpc.CallOption) (*recpb.ListHoldsReply, error) {
	return c.S.ListHolds(ctx, in)
}
func (c RegistryClient) Totals(ctx context.Context, in *recpb.TotalsRequest, _ ...grpc.CallOption) (*recpb.RegistryTotals, error) {
	return c.S.Totals(ctx, in)
}

// AccountsClient calls an accounts server directly.
type AccountsClient struct{ S *accounts.Server }

func (c AccountsClient) Open(ctx context.Context, in *recpb.OpenRequest, _ ...grpc.CallOption) (*recpb.Account, error) {
	return c.S.Open(ctx, in)
}
func (c AccountsClient) Hold(ctx context.Context, in *recpb.CashHoldRequest, _ ...grpc.CallOption) (*recpb.CashHoldReply, error) {
	return c.S.Hold(ctx, in)
}
func (c AccountsClient) Release(ctx context.Context, in *recpb.ReleaseRequest, _ ...grpc.CallOption) (*recpb.ReleaseReply, error) {
	return c.S.Release(ctx, in)
}
func (c AccountsClient) Capture(ctx context.Context, in *recpb.CaptureRequest, _ ...grpc.CallOption) (*recpb.CaptureReply, error) {
	return c.S.Capture(ctx, in)
}
func (c AccountsClient) Balance(ctx context.Context, in *recpb.BalanceRequest, _ ...grpc.CallOption) (*recpb.Account, error) {
	return c.S.Balance(ctx, in)
}
func (c AccountsClient) ListHolds(ctx context.Context, in *recpb.ListHoldsRequest, _ ...grpc.CallOption) (*recpb.ListHoldsReply, error) {
	return c.S.ListHolds(ctx, in)
}
func (c AccountsClient) Totals(ctx context.Context, in *recpb.TotalsRequest, _ ...grpc.CallOption) (*recpb.AccountsTotals, error) {
	return c.S.Totals(ctx, in)
}

// TradingClient calls a trading server directly.
type TradingClient struct{ S *trading.Server }

func (c TradingClient) PlaceOrder(ctx context.Context, in *recpb.PlaceOrderRequest, _ ...grpc.CallOption) (*recpb.Order, error) {
	return c.S.PlaceOrder(ctx, in)
}
func (c TradingClient) CancelOrder(ctx context.Context, in *recpb.CancelOrderRequest, _ ...grpc.CallOption) (*recpb.Order, error) {
	return c.S.CancelOrder(ctx, in)
}
func (c TradingClient) GetOrder(ctx context.Context, in *recpb.GetOrderRequest, _ ...grpc.CallOption) (*recpb.Order, error) {
	return c.S.GetOrder(ctx, in)
}
func (c TradingClient) Book(ctx context.Context, in *recpb.BookRequest, _ ...grpc.CallOption) (*recpb.BookReply, error) {
	return c.S.Book(ctx, in)
}
func (c TradingClient) Trades(ctx context.Context, in *recpb.TradesRequest, _ ...grpc.CallOption) (*recpb.TradesReply, error) {
	return c.S.Trades(ctx, in)
}
func (c TradingClient) Events(ctx context.Context, in *recpb.EventsRequest, _ ...grpc.CallOption) (*recpb.EventsReply, error) {
	return c.S.Events(ctx, in)
}
func (c TradingClient) Stats(ctx context.Context, in *recpb.TradingStatsRequest, _ ...grpc.CallOption) (*recpb.TradingStats, error) {
	return c.S.Stats(ctx, in)
}

// Seed opens an account with cents for each participant and issues mwh of
// market m to each.
func (p *Platform) Seed(t testing.TB, m *recpb.Market, cents, mwh int64, participants ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, name := range participants {
		if _, err := p.Accounts.Open(ctx, &recpb.OpenRequest{Participant: name, DepositCents: cents}); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Registry.Issue(ctx, &recpb.IssueRequest{LotId: "lot-" + name + "-" + recdb.MarketKey(m), Owner: name, Generator: "g", Market: m, Mwh: mwh}); err != nil {
			t.Fatal(err)
		}
	}
}

// SettlementClient calls a settlement server directly.
type SettlementClient struct{ S *settlement.Server }

func (c SettlementClient) GetTrade(ctx context.Context, in *recpb.GetTradeRequest, _ ...grpc.CallOption) (*recpb.SettledTrade, error) {
	return c.S.GetTrade(ctx, in)
}
func (c SettlementClient) Stats(ctx context.Context, in *recpb.SettlementStatsRequest, _ ...grpc.CallOption) (*recpb.SettlementStats, error) {
	return c.S.Stats(ctx, in)
}
