package resilience

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestRetryBudget(t *testing.T) {
	now := time.Unix(0, 0)
	clock := func() time.Time { return now }
	drain := func(b *retryBudget) (n int) {
		for b.withdraw() {
			n++
		}
		return n
	}
	tests := []struct {
		name  string
		b     Budget
		calls int
		step  func(b *retryBudget) int
		want  int
	}{
		{"floor only", Budget{MinPerSecond: 1, Window: 10 * time.Second}, 0, drain, 10},
		{"ratio plus floor", Budget{Ratio: 0.2, MinPerSecond: 1, Window: 10 * time.Second}, 100, drain, 30},
		{"ratio only", Budget{Ratio: 0.5, Window: time.Second}, 10, drain, 5},
		{"window expiry refills", Budget{Ratio: 0.2, MinPerSecond: 1, Window: 10 * time.Second}, 100, func(b *retryBudget) int {
			drain(b)
			now = now.Add(11 * time.Second) // calls and retries both expired
			return drain(b)
		}, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newRetryBudget(tt.b, clock)
			for range tt.calls {
				b.deposit()
			}
			if diff := cmp.Diff(tt.want, tt.step(b)); diff != "" {
				t.Errorf("retries allowed (-want +got):\n%s", diff)
			}
		})
	}
	var none *retryBudget = newRetryBudget(Budget{}, clock)
	if none != nil || !none.withdraw() {
		t.Error("zero Budget must be nil and allow everything")
	}
}
