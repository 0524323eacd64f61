// Package accounts is the REC platform's cash service: participants'
// balances in integer cents, holds that reserve cash for buy orders, and
// captures that pay out of a hold once per transfer id. Money only moves
// between balances, so the sum of all balances changes only by Open's
// deposits.
package accounts

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/examples/rec/recdb"
	"github.com/gridmesh/gridmesh/examples/rec/recpb"
)

// Schema is the accounts database schema.
var Schema = []string{
	`CREATE TABLE IF NOT EXISTS accounts (
		participant TEXT PRIMARY KEY,
		balance INTEGER NOT NULL CHECK (balance >= 0)
	)`,
	`CREATE TABLE IF NOT EXISTS holds (
		hold_id TEXT PRIMARY KEY,
		participant TEXT NOT NULL,
		cents INTEGER NOT NULL,
		remaining INTEGER NOT NULL CHECK (remaining >= 0),
		released INTEGER NOT NULL DEFAULT 0,
		at_ms INTEGER NOT NULL DEFAULT 0
	)`,
	`CREATE INDEX IF NOT EXISTS holds_open ON holds (released, at_ms)`,
	`CREATE INDEX IF NOT EXISTS holds_by_participant ON holds (participant, released)`,
	`CREATE TABLE IF NOT EXISTS captures (
		transfer_id TEXT PRIMARY KEY,
		hold_id TEXT NOT NULL,
		from_participant TEXT NOT NULL,
		to_participant TEXT NOT NULL,
		cents INTEGER NOT NULL,
		at_ms INTEGER NOT NULL
	)`,
}

// Server implements recpb.AccountsServer on a database opened with Schema.
// Safe for concurrent use.
type Server struct {
	recpb.UnimplementedAccountsServer
	db *sql.DB
}

// New returns the accounts service on db.
func New(db *sql.DB) *Server { return &Server{db: db} }

func account(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, p string) (*recpb.Account, error) {
	a := &recpb.Account{Participant: p}
	err := q.QueryRowContext(ctx, `SELECT balance, (SELECT coalesce(sum(remaining), 0) FROM holds WHERE participant = ? AND released = 0) FROM accounts WHERE participant = ?`, p, p).
		Scan(&a.BalanceCents, &a.HeldCents)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, status.Errorf(codes.NotFound, "participant %q has no account", p)
	}
	return a, err
}

func (s *Server) Open(ctx context.Context, req *recpb.OpenRequest) (*recpb.Account, error) {
	if err := recdb.CheckID("participant", req.GetParticipant()); err != nil {
		return nil, err
	}
	if req.GetDepositCents() < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "deposit_cents %d: want >= 0", req.GetDepositCents())
	}
	var a *recpb.Account
	err := recdb.Tx(ctx, s.db, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO accounts (participant, balance) VALUES (?, ?) ON CONFLICT(participant) DO NOTHING`, req.GetParticipant(), req.GetDepositCents()); err != nil {
			return err
		}
		var err error
		a, err = account(ctx, tx, req.GetParticipant())
		return err
	})
	if err != nil {
		return nil, recdb.StoreErr(err)
	}
	return a, nil
}

func (s *Server) Hold(ctx context.Context, req *recpb.CashHoldRequest) (*recpb.CashHoldReply, error) {
	if err := recdb.CheckID("hold_id", req.GetHoldId()); err != nil {
		return nil, err
	}
	if req.GetCents() <= 0 {
		return nil, status.Errorf(codes.InvalidArgument, "cents %d: want > 0", req.GetCents())
	}
	reply := &recpb.CashHoldReply{HoldId: req.GetHoldId()}
	err := recdb.Tx(ctx, s.db, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `SELECT remaining FROM holds WHERE hold_id = ?`, req.GetHoldId()).Scan(&reply.RemainingCents)
		if err == nil || !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		a, err := account(ctx, tx, req.GetParticipant())
		if err != nil {
			return err
		}
		if free := a.BalanceCents - a.HeldCents; free < req.GetCents() {
			return status.Errorf(codes.FailedPrecondition, "%s has %d cents free, the order needs %d", req.GetParticipant(), free, req.GetCents())
		}
		reply.RemainingCents = req.GetCents()
		_, err = tx.ExecContext(ctx, `INSERT INTO holds (hold_id, participant, cents, remaining, at_ms) VALUES (?, ?, ?, ?, ?)`,
			req.GetHoldId(), req.GetParticipant(), req.GetCents(), req.GetCents(), time.Now().UnixMilli())
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
			_, err = tx.ExecContext(ctx, `INSERT INTO holds (hold_id, participant, cents, remaining, released) VALUES (?, '', 0, 0, 1)`, req.GetHoldId())
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

func (s *Server) Capture(ctx context.Context, req *recpb.CaptureRequest) (*recpb.CaptureReply, error) {
	if err := recdb.CheckID("transfer_id", req.GetTransferId()); err != nil {
		return nil, err
	}
	if err := recdb.CheckID("to", req.GetTo()); err != nil {
		return nil, err
	}
	if req.GetCents() <= 0 {
		return nil, status.Errorf(codes.InvalidArgument, "cents %d: want > 0", req.GetCents())
	}
	reply := &recpb.CaptureReply{TransferId: req.GetTransferId()}
	err := recdb.Tx(ctx, s.db, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `SELECT cents FROM captures WHERE transfer_id = ?`, req.GetTransferId()).Scan(&reply.Cents)
		if err == nil || !errors.Is(err, sql.ErrNoRows) {
			return err // applied before, or failed
		}
		var from string
		var remaining int64
		var released int
		err = tx.QueryRowContext(ctx, `SELECT participant, remaining, released FROM holds WHERE hold_id = ?`, req.GetHoldId()).Scan(&from, &remaining, &released)
		if errors.Is(err, sql.ErrNoRows) {
			return status.Errorf(codes.FailedPrecondition, "hold %q does not exist", req.GetHoldId())
		}
		if err != nil {
			return err
		}
		if released == 1 || remaining < req.GetCents() {
			return status.Errorf(codes.FailedPrecondition, "hold %q has %d cents left (released: %v), the capture needs %d", req.GetHoldId(), remaining, released == 1, req.GetCents())
		}
		if _, err := tx.ExecContext(ctx, `UPDATE holds SET remaining = remaining - ? WHERE hold_id = ?`, req.GetCents(), req.GetHoldId()); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE accounts SET balance = balance - ? WHERE participant = ?`, req.GetCents(), from); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO accounts (participant, balance) VALUES (?, ?) ON CONFLICT(participant) DO UPDATE SET balance = balance + excluded.balance`, req.GetTo(), req.GetCents()); err != nil {
			return err
		}
		reply.Cents = req.GetCents()
		_, err = tx.ExecContext(ctx, `INSERT INTO captures (transfer_id, hold_id, from_participant, to_participant, cents, at_ms) VALUES (?, ?, ?, ?, ?, ?)`,
			req.GetTransferId(), req.GetHoldId(), from, req.GetTo(), req.GetCents(), time.Now().UnixMilli())
		return err
	})
	if err != nil {
		return nil, recdb.StoreErr(err)
	}
	return reply, nil
}

func (s *Server) Balance(ctx context.Context, req *recpb.BalanceRequest) (*recpb.Account, error) {
	a, err := account(ctx, s.db, req.GetParticipant())
	if err != nil {
		return nil, recdb.StoreErr(err)
	}
	return a, nil
}

func (s *Server) Totals(ctx context.Context, _ *recpb.TotalsRequest) (*recpb.AccountsTotals, error) {
	t := &recpb.AccountsTotals{}
	err := s.db.QueryRowContext(ctx, `SELECT
		(SELECT coalesce(sum(balance), 0) FROM accounts),
		(SELECT coalesce(sum(remaining), 0) FROM holds WHERE released = 0),
		(SELECT count(*) FROM accounts),
		(SELECT count(*) FROM captures),
		(SELECT coalesce(sum(cents), 0) FROM captures),
		(SELECT count(*) FROM idempotency)`).
		Scan(&t.TotalCents, &t.HeldCents, &t.Participants, &t.Captures, &t.CapturedCents, &t.IdempotencyKeys)
	if err != nil {
		return nil, recdb.StoreErr(err)
	}
	return t, nil
}

// ListHolds lists unreleased holds placed before req's time, oldest first.
func (s *Server) ListHolds(ctx context.Context, req *recpb.ListHoldsRequest) (*recpb.ListHoldsReply, error) {
	return recdb.ListHolds(ctx, s.db, "participant", req)
}
