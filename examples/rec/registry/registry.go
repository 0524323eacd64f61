// Package registry is the REC registry service: certificates as lots
// (generator, energy source, vintage, MWh) owned by participants, holds
// that reserve MWh for sell orders, transfers applied once per transfer id,
// and retirement. Every change keeps the total MWh of all lots constant:
// a transfer or retirement splits a lot, it never creates or destroys MWh.
package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/examples/rec/recdb"
	"github.com/gridmesh/gridmesh/examples/rec/recpb"
)

// Schema is the registry's database schema.
var Schema = []string{
	`CREATE TABLE IF NOT EXISTS lots (
		n INTEGER PRIMARY KEY AUTOINCREMENT,
		lot_id TEXT NOT NULL UNIQUE,
		owner TEXT NOT NULL,
		generator TEXT NOT NULL,
		source TEXT NOT NULL,
		vintage INTEGER NOT NULL,
		mwh INTEGER NOT NULL CHECK (mwh >= 0),
		retired INTEGER NOT NULL DEFAULT 0,
		parent TEXT NOT NULL DEFAULT ''
	)`,
	`CREATE INDEX IF NOT EXISTS lots_by_owner ON lots (owner, source, vintage, retired)`,
	`CREATE TABLE IF NOT EXISTS holds (
		hold_id TEXT PRIMARY KEY,
		owner TEXT NOT NULL,
		source TEXT NOT NULL,
		vintage INTEGER NOT NULL,
		mwh INTEGER NOT NULL,
		remaining INTEGER NOT NULL CHECK (remaining >= 0),
		released INTEGER NOT NULL DEFAULT 0,
		at_ms INTEGER NOT NULL DEFAULT 0
	)`,
	`CREATE INDEX IF NOT EXISTS holds_open ON holds (released, at_ms)`,
	`CREATE INDEX IF NOT EXISTS holds_by_owner ON holds (owner, source, vintage, released)`,
	`CREATE TABLE IF NOT EXISTS transfers (
		transfer_id TEXT PRIMARY KEY,
		hold_id TEXT NOT NULL,
		from_owner TEXT NOT NULL,
		to_owner TEXT NOT NULL,
		mwh INTEGER NOT NULL,
		at_ms INTEGER NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS retirements (
		retirement_id TEXT PRIMARY KEY,
		owner TEXT NOT NULL,
		mwh INTEGER NOT NULL
	)`,
}

// Server implements recpb.RegistryServer on a database opened with Schema.
// Safe for concurrent use, also by several processes sharing the database.
type Server struct {
	recpb.UnimplementedRegistryServer
	db *sql.DB
}

// New returns the registry on db.
func New(db *sql.DB) *Server { return &Server{db: db} }

func (s *Server) Issue(ctx context.Context, req *recpb.IssueRequest) (*recpb.Lot, error) {
	if err := recdb.CheckID("lot_id", req.GetLotId()); err != nil {
		return nil, err
	}
	if err := recdb.CheckID("owner", req.GetOwner()); err != nil {
		return nil, err
	}
	if err := recdb.CheckMarket(req.GetMarket()); err != nil {
		return nil, err
	}
	if req.GetMwh() <= 0 {
		return nil, status.Errorf(codes.InvalidArgument, "mwh %d: want > 0", req.GetMwh())
	}
	var lot *recpb.Lot
	err := recdb.Tx(ctx, s.db, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO lots (lot_id, owner, generator, source, vintage, mwh) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(lot_id) DO NOTHING`,
			req.GetLotId(), req.GetOwner(), req.GetGenerator(), req.GetMarket().GetEnergySource(), req.GetMarket().GetVintage(), req.GetMwh())
		if err != nil {
			return err
		}
		lot, err = getLot(ctx, tx, req.GetLotId())
		return err
	})
	return lot, recdb.StoreErr(err)
}

func getLot(ctx context.Context, tx *sql.Tx, id string) (*recpb.Lot, error) {
	l := &recpb.Lot{Market: &recpb.Market{}}
	var retired int
	err := tx.QueryRowContext(ctx, `SELECT lot_id, owner, generator, source, vintage, mwh, retired, parent FROM lots WHERE lot_id = ?`, id).
		Scan(&l.LotId, &l.Owner, &l.Generator, &l.Market.EnergySource, &l.Market.Vintage, &l.Mwh, &retired, &l.ParentLotId)
	l.Retired = retired == 1
	return l, err
}

// free returns the MWh owner may still hold or retire in market m.
func free(ctx context.Context, tx *sql.Tx, owner string, m *recpb.Market) (int64, error) {
	var owned, held int64
	if err := tx.QueryRowContext(ctx, `SELECT coalesce(sum(mwh), 0) FROM lots WHERE owner = ? AND source = ? AND vintage = ? AND retired = 0`,
		owner, m.GetEnergySource(), m.GetVintage()).Scan(&owned); err != nil {
		return 0, err
	}
	if err := tx.QueryRowContext(ctx, `SELECT coalesce(sum(remaining), 0) FROM holds WHERE owner = ? AND source = ? AND vintage = ? AND released = 0`,
		owner, m.GetEnergySource(), m.GetVintage()).Scan(&held); err != nil {
		return 0, err
	}
	return owned - held, nil
}

func (s *Server) Hold(ctx context.Context, req *recpb.HoldRequest) (*recpb.HoldReply, error) {
	if err := recdb.CheckID("hold_id", req.GetHoldId()); err != nil {
		return nil, err
	}
	if err := recdb.CheckMarket(req.GetMarket()); err != nil {
		return nil, err
	}
	if req.GetMwh() <= 0 {
		return nil, status.Errorf(codes.InvalidArgument, "mwh %d: want > 0", req.GetMwh())
	}
	reply := &recpb.HoldReply{HoldId: req.GetHoldId()}
	err := recdb.Tx(ctx, s.db, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `SELECT remaining FROM holds WHERE hold_id = ?`, req.GetHoldId()).Scan(&reply.RemainingMwh)
		if err == nil {
			return nil // a repeat
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		f, err := free(ctx, tx, req.GetOwner(), req.GetMarket())
		if err != nil {
			return err
		}
		if f < req.GetMwh() {
			return status.Errorf(codes.FailedPrecondition, "%s has %d MWh of %s free, the order needs %d", req.GetOwner(), f, recdb.MarketKey(req.GetMarket()), req.GetMwh())
		}
		reply.RemainingMwh = req.GetMwh()
		_, err = tx.ExecContext(ctx, `INSERT INTO holds (hold_id, owner, source, vintage, mwh, remaining, at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)`,
			req.GetHoldId(), req.GetOwner(), req.GetMarket().GetEnergySource(), req.GetMarket().GetVintage(), req.GetMwh(), req.GetMwh(), time.Now().UnixMilli())
		return err
	})
	if err != nil {
		return nil, recdb.StoreErr(err)
	}
	return reply, nil
}

func (s *Server) Release(ctx context.Context, req *recpb.ReleaseRequest) (*recpb.ReleaseReply, error) {
	if err := recdb.CheckID("hold_id", req.GetHoldId()); err != nil {
		return nil, err
	}
	reply := &recpb.ReleaseReply{HoldId: req.GetHoldId()}
	err := recdb.Tx(ctx, s.db, func(tx *sql.Tx) error {
		reply.Released = 0
		var remaining int64
		var released int
		err := tx.QueryRowContext(ctx, `SELECT remaining, released FROM holds WHERE hold_id = ?`, req.GetHoldId()).Scan(&remaining, &released)
		if errors.Is(err, sql.ErrNoRows) {
			// A tombstone, so that a Hold arriving late holds nothing.
			_, err = tx.ExecContext(ctx, `INSERT INTO holds (hold_id, owner, source, vintage, mwh, remaining, released) VALUES (?, '', '', 0, 0, 0, 1)`, req.GetHoldId())
			return err
		}
		if err != nil || released == 1 {
			return err
		}
		reply.Released = remaining
		_, err = tx.ExecContext(ctx, `UPDATE holds SET remaining = 0, released = 1 WHERE hold_id = ?`, req.GetHoldId())
		return err
	})
	if err != nil {
		return nil, recdb.StoreErr(err)
	}
	return reply, nil
}

// split takes mwh of owner's unretired lots in market m, oldest first, and
// moves them into new lots named prefix/1, prefix/2, ... owned by to
// (retired when retire is set).
func split(ctx context.Context, tx *sql.Tx, owner string, m *recpb.Market, mwh int64, prefix, to string, retire bool) ([]*recpb.Lot, error) {
	rows, err := tx.QueryContext(ctx, `SELECT lot_id, generator, mwh FROM lots WHERE owner = ? AND source = ? AND vintage = ? AND retired = 0 AND mwh > 0 ORDER BY n`,
		owner, m.GetEnergySource(), m.GetVintage())
	if err != nil {
		return nil, err
	}
	type take struct {
		lot, generator string
		mwh            int64
	}
	var takes []take
	need := mwh
	for rows.Next() && need > 0 {
		var t take
		var have int64
		if err := rows.Scan(&t.lot, &t.generator, &have); err != nil {
			rows.Close()
			return nil, err
		}
		t.mwh = min(have, need)
		need -= t.mwh
		takes = append(takes, t)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if need > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "%s owns %d MWh of %s too few", owner, need, recdb.MarketKey(m))
	}
	var lots []*recpb.Lot
	for i, t := range takes {
		if _, err := tx.ExecContext(ctx, `UPDATE lots SET mwh = mwh - ? WHERE lot_id = ?`, t.mwh, t.lot); err != nil {
			return nil, err
		}
		id := fmt.Sprintf("%s/%d", prefix, i+1)
		if _, err := tx.ExecContext(ctx, `INSERT INTO lots (lot_id, owner, generator, source, vintage, mwh, retired, parent) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			id, to, t.generator, m.GetEnergySource(), m.GetVintage(), t.mwh, retire, t.lot); err != nil {
			return nil, err
		}
		lots = append(lots, &recpb.Lot{LotId: id, Owner: to, Generator: t.generator, Market: m, Mwh: t.mwh, Retired: retire, ParentLotId: t.lot})
	}
	return lots, nil
}

func (s *Server) Transfer(ctx context.Context, req *recpb.TransferRequest) (*recpb.TransferReply, error) {
	if err := recdb.CheckID("transfer_id", req.GetTransferId()); err != nil {
		return nil, err
	}
	if err := recdb.CheckID("to", req.GetTo()); err != nil {
		return nil, err
	}
	if req.GetMwh() <= 0 {
		return nil, status.Errorf(codes.InvalidArgument, "mwh %d: want > 0", req.GetMwh())
	}
	reply := &recpb.TransferReply{TransferId: req.GetTransferId()}
	err := recdb.Tx(ctx, s.db, func(tx *sql.Tx) error {
		reply.Lots = nil
		var done string
		err := tx.QueryRowContext(ctx, `SELECT transfer_id FROM transfers WHERE transfer_id = ?`, req.GetTransferId()).Scan(&done)
		if err == nil {
			// Applied before: answer with the lots it made.
			rows, err := tx.QueryContext(ctx, `SELECT lot_id FROM lots WHERE lot_id >= ? AND lot_id < ? ORDER BY n`, req.GetTransferId()+"/", req.GetTransferId()+"0")
			if err != nil {
				return err
			}
			var ids []string
			for rows.Next() {
				var id string
				if err := rows.Scan(&id); err != nil {
					rows.Close()
					return err
				}
				ids = append(ids, id)
			}
			rows.Close()
			for _, id := range ids {
				l, err := getLot(ctx, tx, id)
				if err != nil {
					return err
				}
				reply.Lots = append(reply.Lots, l)
			}
			return rows.Err()
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		var owner string
		var remaining int64
		var released int
		m := &recpb.Market{}
		err = tx.QueryRowContext(ctx, `SELECT owner, source, vintage, remaining, released FROM holds WHERE hold_id = ?`, req.GetHoldId()).
			Scan(&owner, &m.EnergySource, &m.Vintage, &remaining, &released)
		if errors.Is(err, sql.ErrNoRows) {
			return status.Errorf(codes.FailedPrecondition, "hold %q does not exist", req.GetHoldId())
		}
		if err != nil {
			return err
		}
		if released == 1 || remaining < req.GetMwh() {
			return status.Errorf(codes.FailedPrecondition, "hold %q has %d MWh left (released: %v), the transfer needs %d", req.GetHoldId(), remaining, released == 1, req.GetMwh())
		}
		lots, err := split(ctx, tx, owner, m, req.GetMwh(), req.GetTransferId(), req.GetTo(), false)
		if err != nil {
			return err
		}
		reply.Lots = lots
		if _, err := tx.ExecContext(ctx, `UPDATE holds SET remaining = remaining - ? WHERE hold_id = ?`, req.GetMwh(), req.GetHoldId()); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO transfers (transfer_id, hold_id, from_owner, to_owner, mwh, at_ms) VALUES (?, ?, ?, ?, ?, ?)`,
			req.GetTransferId(), req.GetHoldId(), owner, req.GetTo(), req.GetMwh(), time.Now().UnixMilli())
		return err
	})
	if err != nil {
		return nil, recdb.StoreErr(err)
	}
	return reply, nil
}

func (s *Server) Retire(ctx context.Context, req *recpb.RetireRequest) (*recpb.RetireReply, error) {
	if err := recdb.CheckID("retirement_id", req.GetRetirementId()); err != nil {
		return nil, err
	}
	if err := recdb.CheckMarket(req.GetMarket()); err != nil {
		return nil, err
	}
	if req.GetMwh() <= 0 {
		return nil, status.Errorf(codes.InvalidArgument, "mwh %d: want > 0", req.GetMwh())
	}
	reply := &recpb.RetireReply{RetirementId: req.GetRetirementId()}
	err := recdb.Tx(ctx, s.db, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `SELECT mwh FROM retirements WHERE retirement_id = ?`, req.GetRetirementId()).Scan(&reply.Mwh)
		if err == nil || !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		f, err := free(ctx, tx, req.GetOwner(), req.GetMarket())
		if err != nil {
			return err
		}
		if f < req.GetMwh() {
			return status.Errorf(codes.FailedPrecondition, "%s has %d MWh of %s free, retiring needs %d", req.GetOwner(), f, recdb.MarketKey(req.GetMarket()), req.GetMwh())
		}
		if _, err := split(ctx, tx, req.GetOwner(), req.GetMarket(), req.GetMwh(), req.GetRetirementId(), req.GetOwner(), true); err != nil {
			return err
		}
		reply.Mwh = req.GetMwh()
		_, err = tx.ExecContext(ctx, `INSERT INTO retirements (retirement_id, owner, mwh) VALUES (?, ?, ?)`, req.GetRetirementId(), req.GetOwner(), req.GetMwh())
		return err
	})
	if err != nil {
		return nil, recdb.StoreErr(err)
	}
	return reply, nil
}

func (s *Server) Holdings(ctx context.Context, req *recpb.HoldingsRequest) (*recpb.HoldingsReply, error) {
	reply := &recpb.HoldingsReply{Owner: req.GetOwner()}
	rows, err := s.db.QueryContext(ctx, `
		SELECT l.source, l.vintage,
			sum(CASE WHEN l.retired = 0 THEN l.mwh ELSE 0 END),
			sum(CASE WHEN l.retired = 1 THEN l.mwh ELSE 0 END),
			(SELECT coalesce(sum(h.remaining), 0) FROM holds h WHERE h.owner = l.owner AND h.source = l.source AND h.vintage = l.vintage AND h.released = 0)
		FROM lots l WHERE l.owner = ? GROUP BY l.source, l.vintage ORDER BY l.source, l.vintage`, req.GetOwner())
	if err != nil {
		return nil, recdb.StoreErr(err)
	}
	defer rows.Close()
	for rows.Next() {
		h := &recpb.Holding{Market: &recpb.Market{}}
		if err := rows.Scan(&h.Market.EnergySource, &h.Market.Vintage, &h.Mwh, &h.RetiredMwh, &h.HeldMwh); err != nil {
			return nil, recdb.StoreErr(err)
		}
		reply.Holdings = append(reply.Holdings, h)
	}
	return reply, recdb.StoreErr(rows.Err())
}

func (s *Server) Totals(ctx context.Context, _ *recpb.TotalsRequest) (*recpb.RegistryTotals, error) {
	t := &recpb.RegistryTotals{}
	err := s.db.QueryRowContext(ctx, `SELECT
		(SELECT coalesce(sum(mwh), 0) FROM lots),
		(SELECT coalesce(sum(mwh), 0) FROM lots WHERE retired = 1),
		(SELECT coalesce(sum(remaining), 0) FROM holds WHERE released = 0),
		(SELECT count(*) FROM lots),
		(SELECT count(*) FROM transfers),
		(SELECT coalesce(sum(mwh), 0) FROM transfers),
		(SELECT count(*) FROM idempotency)`).
		Scan(&t.TotalMwh, &t.RetiredMwh, &t.HeldMwh, &t.Lots, &t.Transfers, &t.TransferredMwh, &t.IdempotencyKeys)
	if err != nil {
		return nil, recdb.StoreErr(err)
	}
	return t, nil
}

// ListHolds lists unreleased holds placed before req's time, oldest first.
func (s *Server) ListHolds(ctx context.Context, req *recpb.ListHoldsRequest) (*recpb.ListHoldsReply, error) {
	return recdb.ListHolds(ctx, s.db, "owner", req)
}
