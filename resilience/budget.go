package resilience

import (
	"sync"
	"time"
)

const budgetSlots = 10

// retryBudget enforces Budget: over the last Window, retries (and hedges)
// may be at most Ratio*calls + MinPerSecond*Window.Seconds(). The window is
// kept as budgetSlots slots so that old traffic stops counting. Both calls
// and retries expire, so a long healthy period banks no more than one
// window of retries. Safe for concurrent use.
type retryBudget struct {
	ratio   float64
	reserve float64 // MinPerSecond * window seconds
	slot    time.Duration
	now     func() time.Time

	mu      sync.Mutex
	calls   [budgetSlots]float64
	retries [budgetSlots]float64
	epoch   int64 // index of the current slot since the zero time
}

// newRetryBudget returns nil for the zero Budget: no limit.
func newRetryBudget(b Budget, now func() time.Time) *retryBudget {
	if b.Ratio == 0 && b.MinPerSecond == 0 {
		return nil
	}
	return &retryBudget{
		ratio:   b.Ratio,
		reserve: b.MinPerSecond * b.Window.Seconds(),
		slot:    b.Window / budgetSlots,
		now:     now,
	}
}

// advance moves the window to now, clearing expired slots. Requires mu.
func (b *retryBudget) advance() int {
	e := b.now().UnixNano() / int64(b.slot)
	if d := e - b.epoch; d > 0 {
		if d > budgetSlots {
			d = budgetSlots
		}
		for i := int64(1); i <= d; i++ {
			j := (b.epoch + i) % budgetSlots
			b.calls[j], b.retries[j] = 0, 0
		}
		b.epoch = e
	}
	return int(b.epoch % budgetSlots)
}

// deposit records a call. A nil budget records nothing.
func (b *retryBudget) deposit() {
	if b == nil {
		return
	}
	b.mu.Lock()
	b.calls[b.advance()]++
	b.mu.Unlock()
}

// withdraw takes one retry from the budget, reporting whether it was there.
// A nil budget always allows.
func (b *retryBudget) withdraw() bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	cur := b.advance()
	var calls, retries float64
	for i := range budgetSlots {
		calls += b.calls[i]
		retries += b.retries[i]
	}
	if retries+1 > b.ratio*calls+b.reserve {
		return false
	}
	b.retries[cur]++
	return true
}
