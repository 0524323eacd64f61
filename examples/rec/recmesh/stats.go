package recmesh

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"

	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/resilience"
)

// Stats counts what the node's resilience client did, from its Observer.
// Safe for concurrent use.
type Stats struct {
	mu       sync.Mutex
	Retries  map[string]int `json:"retries"` // "method code" → retries
	Breakers []string       `json:"breaker_changes"`
	Budget   int            `json:"budget_exhausted"`
	Rejected int            `json:"rejected"`
	// Recent are the last few errors that caused a retry.
	Recent []string `json:"recent_retry_errors"`
}

func newStats() *Stats { return &Stats{Retries: map[string]int{}} }

func (s *Stats) observer() resilience.Observer {
	return resilience.Observer{
		OnRetry: func(e resilience.RetryEvent) {
			s.mu.Lock()
			s.Retries[e.Method+" after "+status.Code(e.Err).String()]++
			if s.Recent = append(s.Recent, e.Err.Error()); len(s.Recent) > 10 {
				s.Recent = s.Recent[1:]
			}
			s.mu.Unlock()
		},
		OnBreakerStateChange: func(e resilience.BreakerEvent) {
			s.mu.Lock()
			s.Breakers = append(s.Breakers, fmt.Sprintf("%s %s→%s", e.Destination, e.From, e.To))
			s.mu.Unlock()
		},
		OnBudgetExhausted: func(resilience.BudgetEvent) {
			s.mu.Lock()
			s.Budget++
			s.mu.Unlock()
		},
		OnRejected: func(resilience.RejectedEvent) {
			s.mu.Lock()
			s.Rejected++
			s.mu.Unlock()
		},
	}
}

// DebugHandler serves the node's identity, resilience counters and the
// effective client policy per destination as JSON: a stand-in for the
// mesh's admin endpoint until package telemetry provides it.
func (n *Node) DebugHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		n.Stats.mu.Lock()
		defer n.Stats.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(struct {
			ID           string                 `json:"id"`
			Stats        *Stats                 `json:"resilience"`
			Destinations []resilience.Effective `json:"destinations"`
		}{n.ID.String(), n.Stats, n.Resilience.Destinations()})
	})
}
