// Package recdb opens the REC services' SQLite databases (modernc.org/sqlite,
// no cgo) and keeps idempotency keys in them: Store implements
// resilience/idempotency.Store, so a retried write finds the first result
// even after the service was killed and restarted.
//
//	db, err := recdb.Open("registry.db", recdb.Schema(schema))
//	ids := idempotency.NewServer(recdb.NewStore(db, 0), callerID)
package recdb

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver

	"github.com/gridmesh/gridmesh/resilience/idempotency"
)

// Open opens (creating it if needed) the SQLite database at path in WAL mode
// with full synchronous commits, so a committed transaction survives a
// killed process and a power cut, and runs the schema statements. Every
// transaction starts with BEGIN IMMEDIATE: it takes the write lock first,
// so two processes sharing the file serialize instead of failing to
// upgrade a read lock. Writers wait up to 30s for the lock.
//
// Several processes may open the same file (the trading instances do);
// it must be on a local file system.
func Open(ctx context.Context, path string, schema ...string) (*sql.DB, error) {
	q := url.Values{}
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_pragma", "busy_timeout(30000)")
	q.Add("_pragma", "foreign_keys(ON)")
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("recdb: open %s: %w", path, err)
	}
	db.SetMaxOpenConns(8)
	db.SetMaxIdleConns(8)
	db.SetConnMaxIdleTime(time.Minute)
	if err := Tx(ctx, db, func(tx *sql.Tx) error {
		for _, s := range append([]string{storeSchema}, schema...) {
			if _, err := tx.ExecContext(ctx, s); err != nil {
				return fmt.Errorf("schema %q: %w", s, err)
			}
		}
		return nil
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("recdb: open %s: %w", path, err)
	}
	return db, nil
}

// writers serializes the write transactions of one process per database:
// SQLite admits one writer at a time anyway, and waiting on a Go mutex is
// fair and immediate where SQLite's busy handler polls with growing sleeps,
// which starves some writers under load. Other processes sharing the file
// still meet at SQLite's lock.
var writers sync.Map // *sql.DB → *sync.Mutex

// Tx runs fn in a transaction and commits it, or rolls it back when fn
// fails.
func Tx(ctx context.Context, db *sql.DB, fn func(*sql.Tx) error) error {
	mu, _ := writers.LoadOrStore(db, &sync.Mutex{})
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

const storeSchema = `CREATE TABLE IF NOT EXISTS idempotency (
	key TEXT PRIMARY KEY,
	fingerprint BLOB NOT NULL,
	done INTEGER NOT NULL DEFAULT 0,
	code INTEGER NOT NULL DEFAULT 0,
	header TEXT NOT NULL DEFAULT '',
	body BLOB,
	claimed_ms INTEGER NOT NULL,
	done_ms INTEGER NOT NULL DEFAULT 0
)`

// Store is an idempotency.Store in a service's own SQLite database.
// Completed keys are kept for the TTL. Safe for concurrent use and across
// processes sharing the database.
//
// A claim whose request never completed (its process was killed between
// Claim and Complete) is taken over by a later request with the same key
// and fingerprint once it is older than StaleAfter. That can run the
// request a second time, which is safe only because every REC write is
// itself idempotent in its own transaction (an order id, hold id or
// transfer id is a primary key): the Store saves work and answers repeats;
// the handlers' keys make exactly-once hold.
type Store struct {
	db         *sql.DB
	ttl        time.Duration
	staleAfter time.Duration
	now        func() time.Time
}

// StaleAfter is how long an in-flight claim blocks repeats (ABORTED) before
// a repeat may take it over.
const StaleAfter = 2 * time.Second

// NewStore returns a Store in db (opened by Open, which creates the table).
// ttl is how long completed results are kept; 0 means 24 hours.
func NewStore(db *sql.DB, ttl time.Duration) *Store {
	if ttl <= 0 {
		ttl = 24 * time.Hour
	}
	return &Store{db: db, ttl: ttl, staleAfter: StaleAfter, now: time.Now}
}

var _ idempotency.Store = (*Store)(nil)

// Claim implements idempotency.Store: one INSERT ... ON CONFLICT DO NOTHING.
func (s *Store) Claim(ctx context.Context, key string, fp []byte) (*idempotency.Entry, error) {
	now := s.now().UnixMilli()
	var entry *idempotency.Entry
	err := Tx(ctx, s.db, func(tx *sql.Tx) error {
		entry = nil
		res, err := tx.ExecContext(ctx, `INSERT INTO idempotency (key, fingerprint, claimed_ms) VALUES (?, ?, ?) ON CONFLICT(key) DO NOTHING`, key, fp, now)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 1 {
			// Expire old results now and then (about one claim in 64).
			if now%64 == 0 {
				_, err = tx.ExecContext(ctx, `DELETE FROM idempotency WHERE done = 1 AND done_ms < ?`, now-s.ttl.Milliseconds())
			}
			return err
		}
		var (
			e       idempotency.Entry
			done    int
			header  string
			claimed int64
			doneMS  int64
		)
		err = tx.QueryRowContext(ctx, `SELECT fingerprint, done, code, header, body, claimed_ms, done_ms FROM idempotency WHERE key = ?`, key).
			Scan(&e.Fingerprint, &done, &e.Result.Code, &header, &e.Result.Body, &claimed, &doneMS)
		if err != nil {
			return err
		}
		e.Done = done == 1
		if e.Done && doneMS < now-s.ttl.Milliseconds() || !e.Done && claimed < now-s.staleAfter.Milliseconds() && string(e.Fingerprint) == string(fp) {
			// An expired result, or a claim abandoned by a killed
			// process: this request takes the key over.
			_, err := tx.ExecContext(ctx, `UPDATE idempotency SET fingerprint = ?, done = 0, code = 0, header = '', body = NULL, claimed_ms = ?, done_ms = 0 WHERE key = ?`, fp, now, key)
			return err
		}
		if header != "" {
			if err := json.Unmarshal([]byte(header), &e.Result.Header); err != nil {
				return fmt.Errorf("header of key %q: %w", key, err)
			}
		}
		entry = &e
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("recdb: claim: %w", err)
	}
	return entry, nil
}

// Complete implements idempotency.Store.
func (s *Store) Complete(ctx context.Context, key string, res idempotency.Result) error {
	var header string
	if res.Header != nil {
		b, err := json.Marshal(res.Header)
		if err != nil {
			return fmt.Errorf("recdb: complete: %w", err)
		}
		header = string(b)
	}
	r, err := s.db.ExecContext(ctx, `UPDATE idempotency SET done = 1, code = ?, header = ?, body = ?, done_ms = ? WHERE key = ?`,
		res.Code, header, res.Body, s.now().UnixMilli(), key)
	if err != nil {
		return fmt.Errorf("recdb: complete: %w", err)
	}
	if n, _ := r.RowsAffected(); n != 1 {
		return errors.New("recdb: complete: key " + key + " is not claimed")
	}
	return nil
}

// Release implements idempotency.Store.
func (s *Store) Release(ctx context.Context, key string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM idempotency WHERE key = ? AND done = 0`, key); err != nil {
		return fmt.Errorf("recdb: release: %w", err)
	}
	return nil
}

// Len returns the number of keys held, for the services' totals.
func Len(ctx context.Context, db *sql.DB) (int64, error) {
	var n int64
	err := db.QueryRowContext(ctx, `SELECT count(*) FROM idempotency`).Scan(&n)
	return n, err
}
