package consulwatch_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/gridmesh/gridmesh/internal/consulwatch"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestNextIndex(t *testing.T) {
	tests := []struct {
		name      string
		prev, got uint64
		want      uint64
	}{
		{"first answer", 0, 42, 42},
		{"moved forward", 42, 50, 50},
		{"unchanged after wait", 42, 42, 42},
		{"went backwards resets", 42, 7, 0},
		{"zero is clamped to one", 0, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := consulwatch.NextIndex(tt.prev, tt.got); got != tt.want {
				t.Errorf("NextIndex(%d, %d) = %d, want %d", tt.prev, tt.got, got, tt.want)
			}
		})
	}
}

func TestQueryTimeout(t *testing.T) {
	tests := []struct {
		wait, want time.Duration
	}{
		{5 * time.Minute, 5*time.Minute + 18750*time.Millisecond + 2*time.Second},
		{2 * time.Second, 2*time.Second + 125*time.Millisecond + 2*time.Second},
		{0, 2 * time.Second},
	}
	for _, tt := range tests {
		if got := consulwatch.QueryTimeout(tt.wait); got != tt.want {
			t.Errorf("QueryTimeout(%v) = %v, want %v", tt.wait, got, tt.want)
		}
	}
}

func TestBackoffDelayBounds(t *testing.T) {
	b := consulwatch.Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	for attempt, base := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 4: 800 * time.Millisecond, 10: time.Second} {
		for range 50 {
			d := b.Delay(attempt)
			if d < base*8/10 || d > base*12/10 {
				t.Fatalf("Delay(%d) = %v, want %v ± 20%%", attempt, d, base)
			}
		}
	}
}

// TestRunCarriesIndexAndRetries drives Run with a scripted fetch and checks
// the indexes it sends and the hooks it calls.
func TestRunCarriesIndexAndRetries(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type answer struct {
		index uint64
		err   error
	}
	script := []answer{{10, nil}, {12, nil}, {0, errors.New("down")}, {0, errors.New("down")}, {5, nil}, {9, nil}}
	var mu sync.Mutex
	var sent []uint64
	var hooks []string
	runCtx, stop := context.WithCancel(ctx)
	fetch := func(_ context.Context, index uint64) (uint64, error) {
		mu.Lock()
		defer mu.Unlock()
		sent = append(sent, index)
		if len(sent) > len(script) {
			stop()
			return index, nil
		}
		a := script[len(sent)-1]
		return a.index, a.err
	}
	h := consulwatch.Hooks{
		OnError: func(err error, attempt int, _ time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			hooks = append(hooks, "error")
		},
		OnRecover: func() {
			mu.Lock()
			defer mu.Unlock()
			hooks = append(hooks, "recover")
		},
	}
	err := consulwatch.Run(runCtx, consulwatch.Backoff{Min: time.Millisecond, Max: 2 * time.Millisecond}, fetch, h, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want context.Canceled", err)
	}
	mu.Lock()
	defer mu.Unlock()
	// 0 first; 10, 12 carried; errors keep 12; 5 < 12 resets to 0; then 9.
	if diff := cmp.Diff([]uint64{0, 10, 12, 12, 12, 0, 9}, sent); diff != "" {
		t.Errorf("indexes sent (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"error", "error", "recover"}, hooks); diff != "" {
		t.Errorf("hooks (-want +got):\n%s", diff)
	}
}
