package resilience_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gridmesh/gridmesh/resilience"
)

func TestFromConsulMeta(t *testing.T) {
	def := resilience.Default()
	with := func(f func(p *resilience.Policy)) resilience.Policy { p := resilience.Default(); f(&p); return p }
	tests := []struct {
		name    string
		meta    map[string]string
		want    resilience.Policy
		wantErr string
	}{
		{name: "no keys", meta: map[string]string{"version": "v2", "spiffe-id": "spiffe://x/y"}, want: def},
		{name: "retries, breaker, limits", meta: map[string]string{
			"resilience-retry-max-attempts":           "2",
			"resilience-retry-per-try-timeout":        "300ms",
			"resilience-breaker-consecutive-failures": "10",
			"resilience-rate-limit":                   "100/1s",
			"resilience-timeout":                      "5s",
		}, want: with(func(p *resilience.Policy) {
			p.Retry.MaxAttempts, p.Retry.PerTryTimeout, p.Breaker.ConsecutiveFailures = 2, 300*time.Millisecond, 10
			p.RateLimit, p.Timeout = resilience.RateLimit{Requests: 100, Per: time.Second}, 5*time.Second
		})},
		{name: "declared methods", meta: map[string]string{
			"resilience-idempotent":      "/rec.v1.Trading/SettleTrade",
			"resilience-no-side-effects": "/rec.v1.Trading/GetQuote, /rec.v1.Trading/ListTrades",
			"resilience-hedge-delay":     "40ms",
		}, want: with(func(p *resilience.Policy) {
			p.Hedge.Delay = 40 * time.Millisecond
			p.Methods = map[string]resilience.MethodPolicy{
				"/rec.v1.Trading/SettleTrade": {Idempotency: resilience.Idempotent},
				"/rec.v1.Trading/GetQuote":    {Idempotency: resilience.NoSideEffects},
				"/rec.v1.Trading/ListTrades":  {Idempotency: resilience.NoSideEffects},
			}
		})},
		{name: "unknown key", meta: map[string]string{"resilience-retries": "3"}, wantErr: `consul meta "resilience-retries": unknown key`},
		{name: "bad duration", meta: map[string]string{"resilience-timeout": "5"}, wantErr: `consul meta resilience-timeout="5": want a duration, e.g. 15s`},
		{name: "bad rate", meta: map[string]string{"resilience-breaker-failure-rate": "50"}, wantErr: `want a fraction, e.g. 0.5`},
		{name: "retry without backoff", meta: map[string]string{"resilience-retry-initial-backoff": "0s"}, wantErr: `consul meta.retry.initial_backoff = 0s`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := resilience.FromConsulMeta(def, tt.meta)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
