package resilience_test

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/gridmesh/gridmesh/resilience"
)

func ExampleDefault() {
	p := resilience.Default()
	fmt.Println("attempts:", p.Retry.MaxAttempts, "backoff:", p.Retry.InitialBackoff, "to", p.Retry.MaxBackoff)
	fmt.Println("budget:", p.Budget.Ratio, "of calls +", p.Budget.MinPerSecond, "/s")
	fmt.Println("breaker:", p.Breaker.ConsecutiveFailures, "in a row or", p.Breaker.FailureRate, "of", p.Breaker.MinRequests, "in", p.Breaker.Window)
	// Output:
	// attempts: 3 backoff: 25ms to 1s
	// budget: 0.2 of calls + 10 /s
	// breaker: 5 in a row or 0.5 of 20 in 10s
}

// Override the defaults for one destination and one of its methods, and
// show what a call would use.
func ExampleClient_Describe() {
	trading := resilience.Default()
	trading.Methods = map[string]resilience.MethodPolicy{
		// A write the team has made idempotent server-side.
		"/rec.v1.Trading/SettleTrade": {Idempotency: resilience.Idempotent, Timeout: 2 * time.Second},
	}
	rc, err := resilience.NewClient(resilience.Config{
		Source:  resilience.SourceCode,
		Default: resilience.Default(),
		Targets: map[string]resilience.Policy{"xds:///trading": trading},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	e := rc.Describe("xds:///trading", "/rec.v1.Trading/SettleTrade")
	b, _ := json.Marshal(map[string]any{
		"source": e.Source, "override": e.Override, "idempotency": e.Idempotency,
		"from": e.IdempotencyFrom, "timeout": e.Timeout.String(), "breaker": e.BreakerState,
	})
	fmt.Println(string(b))
	// Output:
	// {"breaker":"closed","from":"config","idempotency":"IDEMPOTENT","override":"/rec.v1.Trading/SettleTrade","source":"code","timeout":"2s"}
}

func ExampleConfig_Validate() {
	cfg := resilience.DefaultConfig()
	cfg.Default.Retry.InitialBackoff = 0
	fmt.Fprintln(os.Stdout, cfg.Validate())
	// Output:
	// resilience: invalid config: default.retry.initial_backoff = 0s: want > 0 when retrying (a retry without delay turns one failure into a storm)
}
