package recdb

import (
	"bytes"
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gridmesh/gridmesh/resilience/idempotency"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	now := time.Unix(1_700_000_000, 0)
	s := NewStore(db, time.Hour)
	s.now = func() time.Time { return now }
	fp := []byte("fp")

	if e, err := s.Claim(ctx, "k", fp); e != nil || err != nil {
		t.Fatalf("first claim: %v, %v; want nil, nil", e, err)
	}
	if e, err := s.Claim(ctx, "k", fp); err != nil || e == nil || e.Done {
		t.Fatalf("claim in flight: %+v, %v; want an entry not done", e, err)
	}
	res := idempotency.Result{Code: 0, Body: []byte("answer"), Header: map[string][]string{"X": {"y"}}}
	if err := s.Complete(ctx, "k", res); err != nil {
		t.Fatal(err)
	}
	e, err := s.Claim(ctx, "k", fp)
	if err != nil || e == nil || !e.Done || !bytes.Equal(e.Result.Body, res.Body) || e.Result.Header["X"][0] != "y" {
		t.Fatalf("claim after complete: %+v, %v; want the stored result", e, err)
	}

	// Release forgets an in-flight key.
	s.Claim(ctx, "r", fp)
	if err := s.Release(ctx, "r"); err != nil {
		t.Fatal(err)
	}
	if e, err := s.Claim(ctx, "r", fp); e != nil || err != nil {
		t.Fatalf("claim after release: %v, %v; want nil, nil", e, err)
	}

	// A claim abandoned by a killed process is taken over after
	// StaleAfter, but only by the same request.
	s.Claim(ctx, "dead", fp)
	now = now.Add(StaleAfter + time.Millisecond)
	if e, _ := s.Claim(ctx, "dead", []byte("other")); e == nil {
		t.Errorf("a different request took over a stale claim")
	}
	if e, err := s.Claim(ctx, "dead", fp); e != nil || err != nil {
		t.Errorf("same request after StaleAfter: %+v, %v; want to take the claim over", e, err)
	}

	// Completed results expire after the TTL.
	now = now.Add(2 * time.Hour)
	if e, err := s.Claim(ctx, "k", fp); e != nil || err != nil {
		t.Errorf("claim of an expired result: %+v, %v; want a fresh claim", e, err)
	}
}

func TestStoreClaimIsAtomic(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "s.db")
	var stores []*Store
	for range 2 { // two handles: two processes
		db, err := Open(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		stores = append(stores, NewStore(db, 0))
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e, err := stores[i%2].Claim(ctx, "same", []byte("fp"))
			if err != nil {
				t.Error(err)
				return
			}
			if e == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Errorf("%d concurrent claims of one key won, want exactly 1", wins)
	}
}
