package idempotency

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestMemoryStoreLifecycle(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1000, 0)
	m := NewMemoryStore(time.Minute)
	m.now = func() time.Time { return now }
	fp := []byte("fp")

	steps := []struct {
		name string
		do   func() (*Entry, error)
		want *Entry
	}{
		{"claim new", func() (*Entry, error) { return m.Claim(ctx, "k", fp) }, nil},
		{"claim in flight", func() (*Entry, error) { return m.Claim(ctx, "k", fp) }, &Entry{Fingerprint: fp}},
		{"complete", func() (*Entry, error) { return nil, m.Complete(ctx, "k", Result{Code: 0, Body: []byte("r")}) }, nil},
		{"claim done", func() (*Entry, error) { return m.Claim(ctx, "k", fp) }, &Entry{Fingerprint: fp, Done: true, Result: Result{Body: []byte("r")}}},
		{"expired after ttl", func() (*Entry, error) { now = now.Add(time.Minute); return m.Claim(ctx, "k", fp) }, nil},
		{"release", func() (*Entry, error) { return nil, m.Release(ctx, "k") }, nil},
		{"claim after release", func() (*Entry, error) { return m.Claim(ctx, "k", fp) }, nil},
	}
	for _, s := range steps {
		got, err := s.do()
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if diff := cmp.Diff(s.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", s.name, diff)
		}
	}
	if n := m.Len(); n != 1 {
		t.Errorf("Len = %d, want 1", n)
	}
	if err := m.Complete(ctx, "other", Result{}); err == nil {
		t.Error("Complete of an unclaimed key succeeded")
	}
	_ = m.Close()
	_ = m.Close()
	if _, err := m.Claim(ctx, "k", fp); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Claim after Close = %v, want net.ErrClosed", err)
	}
}
