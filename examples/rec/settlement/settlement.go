// Package settlement turns trades into transfers, exactly once. It reads
// the trading journal in order (Trading.Events, after a durable cursor) and
// for each event:
//
//   - a trade: Registry.Transfer moves the MWh out of the sell order's hold
//     to the buyer, and Accounts.Capture pays price × MWh out of the buy
//     order's hold to the seller. Both use the trade id as their transfer
//     id (a primary key in the registry's and the accounts' own
//     transactions) and as the idempotency key of the call, so however
//     often settlement retries or restarts, each leg applies once;
//   - a closed order: what is left of its hold is released. The journal is
//     in order, so an order's trades are settled before its hold is
//     released.
//
// Only then does the cursor move past the event, in the same transaction
// that records it as settled. A crash between a leg and the cursor repeats
// the event, and the legs answer with their first result.
package settlement

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/examples/rec/recdb"
	"github.com/gridmesh/gridmesh/examples/rec/recpb"
	"github.com/gridmesh/gridmesh/resilience"
)

// Schema is the settlement database schema.
var Schema = []string{
	`CREATE TABLE IF NOT EXISTS cursor (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL)`,
	`INSERT INTO cursor (id, seq) VALUES (1, 0) ON CONFLICT(id) DO NOTHING`,
	`CREATE TABLE IF NOT EXISTS settled (
		trade_id TEXT PRIMARY KEY,
		seq INTEGER NOT NULL,
		source TEXT NOT NULL,
		vintage INTEGER NOT NULL,
		buy_order TEXT NOT NULL,
		sell_order TEXT NOT NULL,
		buyer TEXT NOT NULL,
		seller TEXT NOT NULL,
		mwh INTEGER NOT NULL,
		price INTEGER NOT NULL,
		at_ms INTEGER NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS released (order_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, amount INTEGER NOT NULL)`,
}

// Config configures settlement.
type Config struct {
	Trading  recpb.TradingClient
	Registry recpb.RegistryClient
	Accounts recpb.AccountsClient
	// Poll is the wait between journal reads that found nothing new.
	// Default 50ms.
	Poll time.Duration
	// Logger: default silent.
	Logger *slog.Logger
}

// Server is the settlement service: Run applies the journal, the gRPC
// methods report on it. Safe for concurrent use; run one Run per database.
type Server struct {
	recpb.UnimplementedSettlementServer
	db  *sql.DB
	cfg Config
	log *slog.Logger
	lag atomic.Int64
}

// New returns settlement on db, opened with Schema.
func New(db *sql.DB, cfg Config) *Server {
	if cfg.Poll <= 0 {
		cfg.Poll = 50 * time.Millisecond
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{db: db, cfg: cfg, log: log}
	s.lag.Store(-1) // unknown until the first journal read
	return s
}

// Run applies the journal until ctx ends; it returns ctx's error. It
// blocks. Failed calls are retried with backoff, for ever: an event is
// never skipped.
func (s *Server) Run(ctx context.Context) error {
	var cursor int64
	if err := s.db.QueryRowContext(ctx, `SELECT seq FROM cursor WHERE id = 1`).Scan(&cursor); err != nil {
		return err
	}
	for {
		reply, err := s.cfg.Trading.Events(ctx, &recpb.EventsRequest{AfterSeq: cursor, Limit: 500})
		if err != nil {
			s.log.Warn("reading the trading journal", "after", cursor, "err", err)
			if err := sleep(ctx, 10*s.cfg.Poll); err != nil {
				return err
			}
			continue
		}
		s.lag.Store(reply.GetLastSeq() - cursor)
		for _, ev := range reply.GetEvents() {
			if err := s.settle(ctx, ev); err != nil {
				return err
			}
			cursor = ev.GetSeq()
			s.lag.Store(reply.GetLastSeq() - cursor)
		}
		if len(reply.GetEvents()) == 0 {
			if err := sleep(ctx, s.cfg.Poll); err != nil {
				return err
			}
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// settle applies one event, retrying until it is applied or ctx ends.
func (s *Server) settle(ctx context.Context, ev *recpb.Event) error {
	backoff := 20 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := s.apply(ctx, ev)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		lvl := slog.LevelWarn
		if c := status.Code(err); c == codes.FailedPrecondition || c == codes.InvalidArgument || c == codes.PermissionDenied {
			// Not a transient failure: a bug or a broken invariant.
			// Settlement stops here rather than skip a trade.
			lvl = slog.LevelError
		}
		s.log.Log(ctx, lvl, "settling", "seq", ev.GetSeq(), "attempt", attempt, "err", err)
		if err := sleep(ctx, backoff); err != nil {
			return err
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (s *Server) apply(ctx context.Context, ev *recpb.Event) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	now := time.Now().UnixMilli()
	switch k := ev.GetKind().(type) {
	case *recpb.Event_Trade:
		t := k.Trade
		// The two legs are independent (each idempotent on the trade id in
		// its own database), so they run side by side; the event counts as
		// settled only when both have applied.
		var wg sync.WaitGroup
		var mwhErr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, mwhErr = s.cfg.Registry.Transfer(resilience.WithIdempotencyKey(ctx, "settle-mwh-"+t.GetTradeId()), &recpb.TransferRequest{
				TransferId: t.GetTradeId(), HoldId: t.GetSellOrderId(), To: t.GetBuyer(), Mwh: t.GetMwh(),
			})
		}()
		_, cashErr := s.cfg.Accounts.Capture(resilience.WithIdempotencyKey(ctx, "settle-cash-"+t.GetTradeId()), &recpb.CaptureRequest{
			TransferId: t.GetTradeId(), HoldId: t.GetBuyOrderId(), To: t.GetSeller(), Cents: t.GetMwh() * t.GetPriceCents(),
		})
		wg.Wait()
		if err := errors.Join(mwhErr, cashErr); err != nil {
			return err
		}
		return recdb.Tx(ctx, s.db, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, `INSERT INTO settled (trade_id, seq, source, vintage, buy_order, sell_order, buyer, seller, mwh, price, at_ms)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(trade_id) DO NOTHING`,
				t.GetTradeId(), ev.GetSeq(), t.GetMarket().GetEnergySource(), t.GetMarket().GetVintage(), t.GetBuyOrderId(), t.GetSellOrderId(),
				t.GetBuyer(), t.GetSeller(), t.GetMwh(), t.GetPriceCents(), now); err != nil {
				return err
			}
			return advance(ctx, tx, ev.GetSeq())
		})
	case *recpb.Event_Closed:
		c := k.Closed
		var (
			r   *recpb.ReleaseReply
			err error
		)
		req := &recpb.ReleaseRequest{HoldId: c.GetOrderId()}
		if c.GetSide() == recpb.Side_BUY {
			r, err = s.cfg.Accounts.Release(resilience.WithIdempotencyKey(ctx, "release-"+c.GetOrderId()), req)
		} else {
			r, err = s.cfg.Registry.Release(resilience.WithIdempotencyKey(ctx, "release-"+c.GetOrderId()), req)
		}
		if err != nil {
			return err
		}
		return recdb.Tx(ctx, s.db, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, `INSERT INTO released (order_id, seq, amount) VALUES (?, ?, ?) ON CONFLICT(order_id) DO NOTHING`,
				c.GetOrderId(), ev.GetSeq(), r.GetReleased()); err != nil {
				return err
			}
			return advance(ctx, tx, ev.GetSeq())
		})
	default:
		return status.Errorf(codes.FailedPrecondition, "journal event %d has no kind this settlement knows", ev.GetSeq())
	}
}

func advance(ctx context.Context, tx *sql.Tx, seq int64) error {
	_, err := tx.ExecContext(ctx, `UPDATE cursor SET seq = ? WHERE id = 1 AND seq < ?`, seq, seq)
	return err
}

func (s *Server) GetTrade(ctx context.Context, req *recpb.GetTradeRequest) (*recpb.SettledTrade, error) {
	t := &recpb.Trade{Market: &recpb.Market{}}
	var at int64
	err := s.db.QueryRowContext(ctx, `SELECT trade_id, seq, source, vintage, buy_order, sell_order, buyer, seller, mwh, price, at_ms FROM settled WHERE trade_id = ?`, req.GetTradeId()).
		Scan(&t.TradeId, &t.Seq, &t.Market.EnergySource, &t.Market.Vintage, &t.BuyOrderId, &t.SellOrderId, &t.Buyer, &t.Seller, &t.Mwh, &t.PriceCents, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return &recpb.SettledTrade{Trade: &recpb.Trade{TradeId: req.GetTradeId()}}, nil
	}
	if err != nil {
		return nil, recdb.StoreErr(err)
	}
	return &recpb.SettledTrade{Trade: t, Settled: true, SettledUnixMs: at}, nil
}

func (s *Server) Stats(ctx context.Context, _ *recpb.SettlementStatsRequest) (*recpb.SettlementStats, error) {
	st := &recpb.SettlementStats{Lag: s.lag.Load()}
	err := s.db.QueryRowContext(ctx, `SELECT
		(SELECT seq FROM cursor WHERE id = 1),
		(SELECT count(*) FROM settled),
		(SELECT coalesce(sum(mwh), 0) FROM settled),
		(SELECT coalesce(sum(mwh * price), 0) FROM settled),
		(SELECT count(*) FROM released)`).
		Scan(&st.Cursor, &st.TradesSettled, &st.SettledMwh, &st.SettledCents, &st.HoldsReleased)
	if err != nil {
		return nil, recdb.StoreErr(err)
	}
	return st, nil
}
