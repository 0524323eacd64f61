package idempotency

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"sync"
	"time"
)

// Store keeps the first result per idempotency key. The middleware scopes
// keys by caller before they reach the Store. Implementations must be safe
// for concurrent use, and Claim must be atomic: of two concurrent Claims of
// a new key exactly one wins. A SQL implementation is one table keyed by
// key, with INSERT ... ON CONFLICT DO NOTHING for Claim.
type Store interface {
	// Claim records key as in flight for a request with fingerprint fp and
	// returns nil, nil when the key was new: the caller then runs the
	// request and must call Complete or Release. When the key is already
	// there it returns that entry, and the caller must not run the request.
	Claim(ctx context.Context, key string, fp []byte) (*Entry, error)
	// Complete stores the result for a key this caller claimed.
	Complete(ctx context.Context, key string, res Result) error
	// Release forgets a key this caller claimed, so that a later request
	// with it runs again. The middleware releases only when the handler
	// reported a failure that by contract committed nothing.
	Release(ctx context.Context, key string) error
}

// Entry is what a Store holds for a key.
type Entry struct {
	// Fingerprint identifies the request that claimed the key.
	Fingerprint []byte
	// Done is false while the first request is in flight.
	Done bool
	// Result is the stored result once Done.
	Result Result
}

// Result is a stored response, opaque to the Store.
type Result struct {
	// Code is the gRPC status code, or the HTTP status.
	Code int
	// Header holds the HTTP response headers; nil for gRPC.
	Header map[string][]string
	// Body is, for gRPC, the marshaled response message (Code 0) or the
	// marshaled google.rpc.Status; for HTTP the response body.
	Body []byte
}

// MemoryStore is a Store in memory, for tests and single-replica services:
// its entries vanish with the process, so a restart may apply a repeat
// again. Completed entries expire after the TTL; in-flight claims do not
// expire (the middleware always completes or releases them, panics
// included). It starts no goroutines: expired entries are dropped as new
// keys are claimed. Safe for concurrent use.
type MemoryStore struct {
	ttl time.Duration
	now func() time.Time

	mu      sync.Mutex
	entries map[string]*memEntry
	expiry  []expiring // completion order, which is expiry order
	closed  bool
}

type memEntry struct {
	Entry
	expires time.Time
}

type expiring struct {
	key string
	at  time.Time
}

// NewMemoryStore returns an empty MemoryStore whose completed entries live
// for ttl; 0 means 24 hours.
func NewMemoryStore(ttl time.Duration) *MemoryStore {
	if ttl <= 0 {
		ttl = 24 * time.Hour
	}
	return &MemoryStore{ttl: ttl, now: time.Now, entries: map[string]*memEntry{}}
}

var errClosed = fmt.Errorf("idempotency: memory store: %w", net.ErrClosed)

// Claim implements Store. It does not block.
func (m *MemoryStore) Claim(_ context.Context, key string, fp []byte) (*Entry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, errClosed
	}
	now := m.now()
	m.expire(now)
	if e, ok := m.entries[key]; ok && (!e.Done || now.Before(e.expires)) {
		cp := e.Entry
		return &cp, nil
	}
	m.entries[key] = &memEntry{Entry: Entry{Fingerprint: bytes.Clone(fp)}}
	return nil, nil
}

// Complete implements Store. It does not block.
func (m *MemoryStore) Complete(_ context.Context, key string, res Result) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errClosed
	}
	e, ok := m.entries[key]
	if !ok || e.Done {
		return fmt.Errorf("idempotency: memory store: complete %q: key was not claimed", key)
	}
	e.Done, e.Result = true, res
	e.expires = m.now().Add(m.ttl)
	m.expiry = append(m.expiry, expiring{key, e.expires})
	return nil
}

// Release implements Store. It does not block.
func (m *MemoryStore) Release(_ context.Context, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errClosed
	}
	if e, ok := m.entries[key]; ok && !e.Done {
		delete(m.entries, key)
	}
	return nil
}

// Len returns the number of keys held, in flight or completed.
func (m *MemoryStore) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.entries)
}

// Close drops every entry; later calls fail with an error wrapping
// net.ErrClosed. Safe to call twice.
func (m *MemoryStore) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed, m.entries, m.expiry = true, nil, nil
	return nil
}

// expire drops completed entries whose time has come. Requires mu.
func (m *MemoryStore) expire(now time.Time) {
	n := 0
	for n < len(m.expiry) && !now.Before(m.expiry[n].at) {
		x := m.expiry[n]
		if e, ok := m.entries[x.key]; ok && e.Done && !now.Before(e.expires) {
			delete(m.entries, x.key)
		}
		n++
	}
	if n > 0 {
		m.expiry = append(m.expiry[:0], m.expiry[n:]...)
	}
}
