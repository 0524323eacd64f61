package trading

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/examples/rec/recdb"
	"github.com/gridmesh/gridmesh/examples/rec/recpb"
)

// Schema is the trading journal's schema, shared by every instance.
var Schema = []string{
	// orders: seq is the time priority, assigned in commit order.
	`CREATE TABLE IF NOT EXISTS orders (
		seq INTEGER PRIMARY KEY AUTOINCREMENT,
		order_id TEXT NOT NULL UNIQUE,
		participant TEXT NOT NULL,
		source TEXT NOT NULL,
		vintage INTEGER NOT NULL,
		side INTEGER NOT NULL,
		price INTEGER NOT NULL,
		mwh INTEGER NOT NULL,
		filled INTEGER NOT NULL DEFAULT 0 CHECK (filled <= mwh),
		status INTEGER NOT NULL,
		reason TEXT NOT NULL DEFAULT '',
		instance TEXT NOT NULL,
		at_ms INTEGER NOT NULL
	)`,
	`CREATE INDEX IF NOT EXISTS book ON orders (source, vintage, side, status, price, seq)`,
	// events: the journal settlement consumes, in seq order.
	`CREATE TABLE IF NOT EXISTS events (
		seq INTEGER PRIMARY KEY AUTOINCREMENT,
		kind INTEGER NOT NULL,
		ref TEXT NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS trades (
		trade_id TEXT PRIMARY KEY,
		seq INTEGER NOT NULL,
		source TEXT NOT NULL,
		vintage INTEGER NOT NULL,
		buy_order TEXT NOT NULL,
		sell_order TEXT NOT NULL,
		buyer TEXT NOT NULL,
		seller TEXT NOT NULL,
		mwh INTEGER NOT NULL,
		price INTEGER NOT NULL
	)`,
	`CREATE INDEX IF NOT EXISTS trades_by_buy ON trades (buy_order)`,
	`CREATE INDEX IF NOT EXISTS trades_by_sell ON trades (sell_order)`,
	// markets: which instance matched each market last, and since when.
	`CREATE TABLE IF NOT EXISTS markets (
		market TEXT PRIMARY KEY,
		instance TEXT NOT NULL,
		since_ms INTEGER NOT NULL,
		moves INTEGER NOT NULL DEFAULT 0
	)`,
}

const (
	eventTrade  = 1
	eventClosed = 2
)

// Limits on an order, so that price × MWh fits an int64 with room.
const (
	MaxPriceCents = 100_000_000 // $1M per MWh
	MaxMWh        = 1_000_000
)

// Config configures a trading instance.
type Config struct {
	// Instance names this instance in replies and in the market table.
	Instance string
	// Accounts and Registry place the holds behind buy and sell orders.
	Accounts recpb.AccountsClient
	Registry recpb.RegistryClient
	// Logger receives market moves. Default: silent.
	Logger *slog.Logger
}

// Server is one trading instance over the shared journal. Safe for
// concurrent use; any number of instances may share the database.
type Server struct {
	recpb.UnimplementedTradingServer
	db  *sql.DB
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	markets map[string]*sync.Mutex
}

// New returns a trading instance on db, opened with Schema.
func New(db *sql.DB, cfg Config) *Server {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{db: db, cfg: cfg, log: log, markets: map[string]*sync.Mutex{}}
}

// lock serializes matching of one market inside this process; SQLite's
// write lock serializes it across processes.
func (s *Server) lock(market string) func() {
	s.mu.Lock()
	m, ok := s.markets[market]
	if !ok {
		m = &sync.Mutex{}
		s.markets[market] = m
	}
	s.mu.Unlock()
	m.Lock()
	return m.Unlock
}

type querier interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
	QueryRowContext(context.Context, string, ...any) *sql.Row
}

func checkOrder(req *recpb.PlaceOrderRequest) error {
	if err := recdb.CheckID("order_id", req.GetOrderId()); err != nil {
		return err
	}
	if err := recdb.CheckID("participant", req.GetParticipant()); err != nil {
		return err
	}
	if err := recdb.CheckMarket(req.GetMarket()); err != nil {
		return err
	}
	if req.GetSide() != recpb.Side_BUY && req.GetSide() != recpb.Side_SELL {
		return status.Errorf(codes.InvalidArgument, "side %v: want BUY or SELL", req.GetSide())
	}
	if p := req.GetPriceCents(); p <= 0 || p > MaxPriceCents {
		return status.Errorf(codes.InvalidArgument, "price_cents %d: want 1-%d", p, MaxPriceCents)
	}
	if q := req.GetMwh(); q <= 0 || q > MaxMWh {
		return status.Errorf(codes.InvalidArgument, "mwh %d: want 1-%d", q, MaxMWh)
	}
	return nil
}

// PlaceOrder holds the seller's MWh or the buyer's cash, then accepts and
// matches the order in one transaction. A repeated order_id returns the
// order as it stands; a different order under a used id is refused.
func (s *Server) PlaceOrder(ctx context.Context, req *recpb.PlaceOrderRequest) (*recpb.Order, error) {
	if err := checkOrder(req); err != nil {
		return nil, err
	}
	if o, err := getOrder(ctx, s.db, req.GetOrderId()); err == nil {
		return s.repeat(o, req)
	} else if status.Code(err) != codes.NotFound {
		return nil, recdb.StoreErr(err)
	}

	// The hold comes first and outside the transaction: it is idempotent
	// on the order id, so a crash after it and a retry hold once. An
	// order whose hold is refused is recorded as rejected, so its repeats
	// get the same answer.
	var (
		holdErr    error
		held, need int64
	)
	if req.GetSide() == recpb.Side_BUY {
		need = req.GetPriceCents() * req.GetMwh()
		var r *recpb.CashHoldReply
		r, holdErr = s.cfg.Accounts.Hold(ctx, &recpb.CashHoldRequest{HoldId: req.GetOrderId(), Participant: req.GetParticipant(), Cents: need})
		held = r.GetRemainingCents()
	} else {
		need = req.GetMwh()
		var r *recpb.HoldReply
		r, holdErr = s.cfg.Registry.Hold(ctx, &recpb.HoldRequest{HoldId: req.GetOrderId(), Owner: req.GetParticipant(), Market: req.GetMarket(), Mwh: need})
		held = r.GetRemainingMwh()
	}
	reason := ""
	switch status.Code(holdErr) {
	case codes.OK:
		if held < need {
			// The order does not exist, so nothing traded against its
			// hold: a short hold was released (or tombstoned) already.
			// Accepting would leave settlement nothing to move.
			reason = fmt.Sprintf("the hold for this order was released (%d of %d left)", held, need)
		}
	case codes.FailedPrecondition, codes.NotFound:
		reason = status.Convert(holdErr).Message()
	default:
		return nil, status.Errorf(codes.Unavailable, "trading: hold for order %s: %v", req.GetOrderId(), holdErr)
	}

	market := recdb.MarketKey(req.GetMarket())
	defer s.lock(market)()
	var o *recpb.Order
	err := recdb.Tx(ctx, s.db, func(tx *sql.Tx) error {
		var err error
		o, err = getOrder(ctx, tx, req.GetOrderId())
		if err == nil {
			return nil // another instance took it meanwhile
		}
		if status.Code(err) != codes.NotFound {
			return err
		}
		o, err = s.accept(ctx, tx, req, market, reason)
		return err
	})
	if err != nil {
		return nil, recdb.StoreErr(err)
	}
	if o.GetInstance() != s.cfg.Instance {
		return s.repeat(o, req)
	}
	return o, nil
}

func (s *Server) repeat(o *recpb.Order, req *recpb.PlaceOrderRequest) (*recpb.Order, error) {
	if o.GetStatus() == recpb.OrderStatus_REJECTED && o.GetRejectReason() == VoidReason {
		// The reconciler gave up on this order id and released its hold.
		o.Instance = s.cfg.Instance
		return o, nil
	}
	if o.GetParticipant() != req.GetParticipant() || o.GetSide() != req.GetSide() || o.GetPriceCents() != req.GetPriceCents() ||
		o.GetMwh() != req.GetMwh() || recdb.MarketKey(o.GetMarket()) != recdb.MarketKey(req.GetMarket()) {
		return nil, status.Errorf(codes.AlreadyExists, "order_id %q is taken by a different order", req.GetOrderId())
	}
	o.Instance = s.cfg.Instance
	return o, nil
}

// accept records the order and matches it against the book, price first,
// then time. Trades execute at the resting order's price; a participant's
// orders never match each other.
func (s *Server) accept(ctx context.Context, tx *sql.Tx, req *recpb.PlaceOrderRequest, market, reason string) (*recpb.Order, error) {
	now := time.Now().UnixMilli()
	st := recpb.OrderStatus_OPEN
	if reason != "" {
		st = recpb.OrderStatus_REJECTED
	}
	m := req.GetMarket()
	res, err := tx.ExecContext(ctx, `INSERT INTO orders (order_id, participant, source, vintage, side, price, mwh, status, reason, instance, at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		req.GetOrderId(), req.GetParticipant(), m.GetEnergySource(), m.GetVintage(), int(req.GetSide()), req.GetPriceCents(), req.GetMwh(), int(st), reason, s.cfg.Instance, now)
	if err != nil {
		return nil, err
	}
	if st == recpb.OrderStatus_REJECTED {
		return getOrder(ctx, tx, req.GetOrderId())
	}
	if err := s.own(ctx, tx, market, now); err != nil {
		return nil, err
	}
	seq, _ := res.LastInsertId()
	remaining := req.GetMwh()
	for remaining > 0 {
		var q string
		if req.GetSide() == recpb.Side_BUY {
			q = `SELECT order_id, participant, price, mwh - filled FROM orders WHERE source = ? AND vintage = ? AND side = 2 AND status = 1 AND participant != ? AND price <= ? ORDER BY price ASC, seq ASC LIMIT 64`
		} else {
			q = `SELECT order_id, participant, price, mwh - filled FROM orders WHERE source = ? AND vintage = ? AND side = 1 AND status = 1 AND participant != ? AND price >= ? ORDER BY price DESC, seq ASC LIMIT 64`
		}
		rows, err := tx.QueryContext(ctx, q, m.GetEnergySource(), m.GetVintage(), req.GetParticipant(), req.GetPriceCents())
		if err != nil {
			return nil, err
		}
		type resting struct {
			id, participant string
			price, left     int64
		}
		var book []resting
		for rows.Next() {
			var r resting
			if err := rows.Scan(&r.id, &r.participant, &r.price, &r.left); err != nil {
				rows.Close()
				return nil, err
			}
			book = append(book, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
		if len(book) == 0 {
			break
		}
		for _, r := range book {
			if remaining == 0 {
				break
			}
			qty := min(remaining, r.left)
			buy, sell, buyer, seller := req.GetOrderId(), r.id, req.GetParticipant(), r.participant
			if req.GetSide() == recpb.Side_SELL {
				buy, sell, buyer, seller = r.id, req.GetOrderId(), r.participant, req.GetParticipant()
			}
			tradeID, err := appendEvent(ctx, tx, eventTrade, "")
			if err != nil {
				return nil, err
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO trades (trade_id, seq, source, vintage, buy_order, sell_order, buyer, seller, mwh, price) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				tradeID.id, tradeID.seq, m.GetEnergySource(), m.GetVintage(), buy, sell, buyer, seller, qty, r.price); err != nil {
				return nil, err
			}
			full := qty == r.left
			if _, err := tx.ExecContext(ctx, `UPDATE orders SET filled = filled + ?, status = CASE WHEN filled + ? = mwh THEN 2 ELSE status END WHERE order_id = ?`, qty, qty, r.id); err != nil {
				return nil, err
			}
			if full {
				if _, err := appendEvent(ctx, tx, eventClosed, r.id); err != nil {
					return nil, err
				}
			}
			remaining -= qty
		}
	}
	if filled := req.GetMwh() - remaining; filled > 0 {
		if _, err := tx.ExecContext(ctx, `UPDATE orders SET filled = ?, status = CASE WHEN ? = mwh THEN 2 ELSE status END WHERE seq = ?`, filled, filled, seq); err != nil {
			return nil, err
		}
		if remaining == 0 {
			if _, err := appendEvent(ctx, tx, eventClosed, req.GetOrderId()); err != nil {
				return nil, err
			}
		}
	}
	return getOrder(ctx, tx, req.GetOrderId())
}

type eventID struct {
	seq int64
	id  string
}

// appendEvent adds an event to the journal. A trade's id is made from its
// sequence number ("t42"); ref is set to it.
func appendEvent(ctx context.Context, tx *sql.Tx, kind int, ref string) (eventID, error) {
	res, err := tx.ExecContext(ctx, `INSERT INTO events (kind, ref) VALUES (?, ?)`, kind, ref)
	if err != nil {
		return eventID{}, err
	}
	seq, err := res.LastInsertId()
	if err != nil {
		return eventID{}, err
	}
	if kind == eventTrade {
		ref = fmt.Sprintf("t%d", seq)
		if _, err := tx.ExecContext(ctx, `UPDATE events SET ref = ? WHERE seq = ?`, ref, seq); err != nil {
			return eventID{}, err
		}
	}
	return eventID{seq: seq, id: ref}, nil
}

// own records that this instance matches market, counting a move when
// another instance did before.
func (s *Server) own(ctx context.Context, tx *sql.Tx, market string, now int64) error {
	var prev string
	err := tx.QueryRowContext(ctx, `SELECT instance FROM markets WHERE market = ?`, market).Scan(&prev)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		_, err = tx.ExecContext(ctx, `INSERT INTO markets (market, instance, since_ms) VALUES (?, ?, ?)`, market, s.cfg.Instance, now)
		return err
	case err != nil:
		return err
	case prev == s.cfg.Instance:
		return nil
	}
	s.log.Info("market moved here", "market", market, "from", prev)
	_, err = tx.ExecContext(ctx, `UPDATE markets SET instance = ?, since_ms = ?, moves = moves + 1 WHERE market = ?`, s.cfg.Instance, now, market)
	return err
}

func getOrder(ctx context.Context, q querier, id string) (*recpb.Order, error) {
	o := &recpb.Order{Market: &recpb.Market{}}
	var side, st int
	err := q.QueryRowContext(ctx, `SELECT order_id, participant, source, vintage, side, price, mwh, filled, status, reason, seq, instance FROM orders WHERE order_id = ?`, id).
		Scan(&o.OrderId, &o.Participant, &o.Market.EnergySource, &o.Market.Vintage, &side, &o.PriceCents, &o.Mwh, &o.FilledMwh, &st, &o.RejectReason, &o.Seq, &o.Instance)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, status.Errorf(codes.NotFound, "order %q does not exist", id)
	}
	if err != nil {
		return nil, err
	}
	o.Side, o.Status = recpb.Side(side), recpb.OrderStatus(st)
	col := "buy_order"
	if o.Side == recpb.Side_SELL {
		col = "sell_order"
	}
	o.Fills, err = queryTrades(ctx, q, `WHERE `+col+` = ? ORDER BY seq`, id)
	return o, err
}

func queryTrades(ctx context.Context, q querier, where string, args ...any) ([]*recpb.Trade, error) {
	rows, err := q.QueryContext(ctx, `SELECT trade_id, seq, source, vintage, buy_order, sell_order, buyer, seller, mwh, price FROM trades `+where, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ts []*recpb.Trade
	for rows.Next() {
		t := &recpb.Trade{Market: &recpb.Market{}}
		if err := rows.Scan(&t.TradeId, &t.Seq, &t.Market.EnergySource, &t.Market.Vintage, &t.BuyOrderId, &t.SellOrderId, &t.Buyer, &t.Seller, &t.Mwh, &t.PriceCents); err != nil {
			return nil, err
		}
		ts = append(ts, t)
	}
	return ts, rows.Err()
}

// CancelOrder takes an open order out of the book; what it filled stays
// filled. Cancelling a closed order returns it unchanged.
func (s *Server) CancelOrder(ctx context.Context, req *recpb.CancelOrderRequest) (*recpb.Order, error) {
	if err := recdb.CheckID("order_id", req.GetOrderId()); err != nil {
		return nil, err
	}
	o, err := getOrder(ctx, s.db, req.GetOrderId())
	if err != nil {
		return nil, recdb.StoreErr(err)
	}
	if o.GetParticipant() != req.GetParticipant() {
		return nil, status.Errorf(codes.NotFound, "order %q does not exist", req.GetOrderId())
	}
	defer s.lock(recdb.MarketKey(o.GetMarket()))()
	err = recdb.Tx(ctx, s.db, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE orders SET status = 3 WHERE order_id = ? AND status = 1`, req.GetOrderId())
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 1 {
			if _, err := appendEvent(ctx, tx, eventClosed, req.GetOrderId()); err != nil {
				return err
			}
		}
		o, err = getOrder(ctx, tx, req.GetOrderId())
		return err
	})
	if err != nil {
		return nil, recdb.StoreErr(err)
	}
	o.Instance = s.cfg.Instance
	return o, nil
}

func (s *Server) GetOrder(ctx context.Context, req *recpb.GetOrderRequest) (*recpb.Order, error) {
	o, err := getOrder(ctx, s.db, req.GetOrderId())
	if err != nil {
		return nil, recdb.StoreErr(err)
	}
	o.Instance = s.cfg.Instance
	return o, nil
}

func (s *Server) Book(ctx context.Context, req *recpb.BookRequest) (*recpb.BookReply, error) {
	if err := recdb.CheckMarket(req.GetMarket()); err != nil {
		return nil, err
	}
	depth := req.GetDepth()
	if depth <= 0 || depth > 100 {
		depth = 10
	}
	reply := &recpb.BookReply{Market: req.GetMarket()}
	for _, side := range []struct {
		side  int
		order string
		into  *[]*recpb.BookLevel
	}{{1, "DESC", &reply.Bids}, {2, "ASC", &reply.Asks}} {
		rows, err := s.db.QueryContext(ctx, `SELECT price, sum(mwh - filled), count(*) FROM orders WHERE source = ? AND vintage = ? AND side = ? AND status = 1 GROUP BY price ORDER BY price `+side.order+` LIMIT ?`,
			req.GetMarket().GetEnergySource(), req.GetMarket().GetVintage(), side.side, depth)
		if err != nil {
			return nil, recdb.StoreErr(err)
		}
		for rows.Next() {
			l := &recpb.BookLevel{}
			if err := rows.Scan(&l.PriceCents, &l.Mwh, &l.Orders); err != nil {
				rows.Close()
				return nil, recdb.StoreErr(err)
			}
			*side.into = append(*side.into, l)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, recdb.StoreErr(err)
		}
	}
	return reply, nil
}

func (s *Server) Trades(ctx context.Context, req *recpb.TradesRequest) (*recpb.TradesReply, error) {
	limit := req.GetLimit()
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	where, args := `WHERE 1 = 1`, []any{}
	if m := req.GetMarket(); m != nil {
		where += ` AND source = ? AND vintage = ?`
		args = append(args, m.GetEnergySource(), m.GetVintage())
	}
	if p := req.GetParticipant(); p != "" {
		where += ` AND (buyer = ? OR seller = ?)`
		args = append(args, p, p)
	}
	ts, err := queryTrades(ctx, s.db, where+` ORDER BY seq DESC LIMIT ?`, append(args, limit)...)
	if err != nil {
		return nil, recdb.StoreErr(err)
	}
	return &recpb.TradesReply{Trades: ts}, nil
}

// Events returns the journal after req.AfterSeq, oldest first. SQLite has
// one writer at a time and a transaction takes the write lock before it
// allocates a sequence number, so numbers become visible in order: a
// reader never sees seq n+1 before n, and a cursor never skips an event.
func (s *Server) Events(ctx context.Context, req *recpb.EventsRequest) (*recpb.EventsReply, error) {
	limit := req.GetLimit()
	if limit <= 0 || limit > 1000 {
		limit = 200
	}
	reply := &recpb.EventsReply{}
	rows, err := s.db.QueryContext(ctx, `
		SELECT e.seq, e.kind,
			coalesce(t.trade_id, ''), coalesce(t.source, ''), coalesce(t.vintage, 0), coalesce(t.buy_order, ''), coalesce(t.sell_order, ''),
			coalesce(t.buyer, ''), coalesce(t.seller, ''), coalesce(t.mwh, 0), coalesce(t.price, 0),
			coalesce(o.order_id, ''), coalesce(o.participant, ''), coalesce(o.side, 0), coalesce(o.status, 0)
		FROM events e
		LEFT JOIN trades t ON e.kind = 1 AND t.trade_id = e.ref
		LEFT JOIN orders o ON e.kind = 2 AND o.order_id = e.ref
		WHERE e.seq > ? ORDER BY e.seq LIMIT ?`, req.GetAfterSeq(), limit)
	if err != nil {
		return nil, recdb.StoreErr(err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			e          recpb.Event
			kind       int
			t          = &recpb.Trade{Market: &recpb.Market{}}
			c          = &recpb.OrderClosed{}
			side, stat int
		)
		if err := rows.Scan(&e.Seq, &kind, &t.TradeId, &t.Market.EnergySource, &t.Market.Vintage, &t.BuyOrderId, &t.SellOrderId,
			&t.Buyer, &t.Seller, &t.Mwh, &t.PriceCents, &c.OrderId, &c.Participant, &side, &stat); err != nil {
			return nil, recdb.StoreErr(err)
		}
		switch kind {
		case eventTrade:
			t.Seq = e.Seq
			e.Kind = &recpb.Event_Trade{Trade: t}
		case eventClosed:
			c.Side, c.Status = recpb.Side(side), recpb.OrderStatus(stat)
			e.Kind = &recpb.Event_Closed{Closed: c}
		}
		reply.Events = append(reply.Events, &e)
	}
	if err := rows.Err(); err != nil {
		return nil, recdb.StoreErr(err)
	}
	if err := s.db.QueryRowContext(ctx, `SELECT coalesce(max(seq), 0) FROM events`).Scan(&reply.LastSeq); err != nil {
		return nil, recdb.StoreErr(err)
	}
	return reply, nil
}

func (s *Server) Stats(ctx context.Context, _ *recpb.TradingStatsRequest) (*recpb.TradingStats, error) {
	st := &recpb.TradingStats{}
	err := s.db.QueryRowContext(ctx, `SELECT
		(SELECT count(*) FROM orders WHERE status != 4),
		(SELECT count(*) FROM orders WHERE status = 4 AND reason != ?),
		(SELECT count(*) FROM orders WHERE status = 1),
		(SELECT count(*) FROM orders WHERE status = 3),
		(SELECT count(*) FROM trades),
		(SELECT coalesce(sum(mwh), 0) FROM trades),
		(SELECT coalesce(sum(mwh * price), 0) FROM trades),
		(SELECT coalesce(max(seq), 0) FROM events),
		(SELECT coalesce(sum(moves), 0) FROM markets),
		(SELECT coalesce(sum(mwh - filled), 0) FROM orders WHERE side = 2 AND status = 1),
		(SELECT coalesce(sum(o.price * o.mwh - (SELECT coalesce(sum(t.mwh * t.price), 0) FROM trades t WHERE t.buy_order = o.order_id)), 0)
			FROM orders o WHERE o.side = 1 AND o.status = 1),
		(SELECT count(*) FROM orders WHERE status = 4 AND reason = ?)`, VoidReason, VoidReason).
		Scan(&st.OrdersAccepted, &st.OrdersRejected, &st.OrdersOpen, &st.OrdersCancelled, &st.Trades, &st.TradedMwh, &st.TradedCents, &st.LastSeq, &st.MarketMoves,
			&st.OpenSellMwh, &st.OpenBuyHoldCents, &st.OrdersVoided)
	if err != nil {
		return nil, recdb.StoreErr(err)
	}
	return st, nil
}

// VoidReason is the reject reason of an order id the reconciler voided.
const VoidReason = "voided: its hold was placed but the order never reached the journal"

// Reconcile releases the holds placed more than age ago whose order never
// reached the journal: the instance that placed one died between the hold
// and the commit, and the client gave up instead of repeating the order.
// It first records the order id as voided (a rejected order), in a
// transaction, so no PlaceOrder can accept it afterwards (a repeat gets the
// voided order), and only then releases the hold; a crash in between is
// finished by the next run. It returns how many holds it released. Safe to
// run on every instance at once.
func (s *Server) Reconcile(ctx context.Context, age time.Duration) (int, error) {
	before := time.Now().Add(-age).UnixMilli()
	n := 0
	for _, side := range []recpb.Side{recpb.Side_BUY, recpb.Side_SELL} {
		var (
			holds *recpb.ListHoldsReply
			err   error
		)
		req := &recpb.ListHoldsRequest{PlacedBeforeUnixMs: before, Limit: 200}
		if side == recpb.Side_BUY {
			holds, err = s.cfg.Accounts.ListHolds(ctx, req)
		} else {
			holds, err = s.cfg.Registry.ListHolds(ctx, req)
		}
		if err != nil {
			return n, fmt.Errorf("trading: reconcile: list holds: %w", err)
		}
		for _, h := range holds.GetHolds() {
			void, err := s.void(ctx, h, side)
			if err != nil {
				return n, fmt.Errorf("trading: reconcile: void %s: %w", h.GetHoldId(), err)
			}
			if !void {
				continue
			}
			rel := &recpb.ReleaseRequest{HoldId: h.GetHoldId()}
			if side == recpb.Side_BUY {
				_, err = s.cfg.Accounts.Release(ctx, rel)
			} else {
				_, err = s.cfg.Registry.Release(ctx, rel)
			}
			if err != nil {
				return n, fmt.Errorf("trading: reconcile: release %s: %w", h.GetHoldId(), err)
			}
			s.log.Warn("released the hold of an order that never came", "order", h.GetHoldId(), "participant", h.GetOwner(), "side", side.String())
			n++
		}
	}
	return n, nil
}

// void records h's order id as voided unless an order has it; it reports
// whether the hold is now the reconciler's to release.
func (s *Server) void(ctx context.Context, h *recpb.HoldInfo, side recpb.Side) (bool, error) {
	var void bool
	err := recdb.Tx(ctx, s.db, func(tx *sql.Tx) error {
		o, err := getOrder(ctx, tx, h.GetHoldId())
		if err == nil {
			void = o.GetStatus() == recpb.OrderStatus_REJECTED && o.GetRejectReason() == VoidReason
			return nil
		}
		if status.Code(err) != codes.NotFound {
			return err
		}
		void = true
		_, err = tx.ExecContext(ctx, `INSERT INTO orders (order_id, participant, source, vintage, side, price, mwh, status, reason, instance, at_ms) VALUES (?, ?, '', 0, ?, 0, 0, 4, ?, ?, ?)`,
			h.GetHoldId(), h.GetOwner(), int(side), VoidReason, s.cfg.Instance, time.Now().UnixMilli())
		return err
	})
	return void, err
}
