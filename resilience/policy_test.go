package resilience_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gridmesh/gridmesh/resilience"
	"github.com/gridmesh/gridmesh/resilience/internal/ledgertest"
)

func TestConfigValidate(t *testing.T) {
	mod := func(f func(p *resilience.Policy)) resilience.Config {
		c := resilience.DefaultConfig()
		f(&c.Default)
		return c
	}
	tests := []struct {
		name    string
		cfg     resilience.Config
		wantErr []string // substrings, in any order; nil means valid
	}{
		{name: "default", cfg: resilience.DefaultConfig()},
		{name: "zero policy", cfg: resilience.Config{}},
		{name: "retry without backoff", cfg: mod(func(p *resilience.Policy) { p.Retry.InitialBackoff = 0 }),
			wantErr: []string{"default.retry.initial_backoff = 0s: want > 0 when retrying"}},
		{name: "bad source", cfg: resilience.Config{Source: "etcd"}, wantErr: []string{`source "etcd"`}},
		{name: "bad jitter and breaker rate", cfg: mod(func(p *resilience.Policy) { p.Retry.Jitter = 1; p.Breaker.FailureRate = 2 }),
			wantErr: []string{"default.retry.jitter = 1", "default.breaker.failure_rate = 2"}},
		{name: "bad method key", cfg: mod(func(p *resilience.Policy) {
			p.Methods = map[string]resilience.MethodPolicy{"pkg.Svc/M": {}}
		}), wantErr: []string{`default.methods["pkg.Svc/M"]: key must be`}},
		{name: "good method keys", cfg: mod(func(p *resilience.Policy) {
			p.Methods = map[string]resilience.MethodPolicy{"/pkg.Svc/M": {}, "/pkg.Svc/": {}, "POST /trades": {}, "PUT": {}}
		})},
		{name: "target budget without window", cfg: resilience.Config{Targets: map[string]resilience.Policy{
			"xds:///trading": {Budget: resilience.Budget{Ratio: 0.2}},
		}}, wantErr: []string{`targets["xds:///trading"].budget.window = 0s`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				if _, err := resilience.NewClient(tt.cfg); err != nil {
					t.Fatalf("NewClient = %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate = nil, want errors %q", tt.wantErr)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate = %q, want it to contain %q", err, w)
				}
			}
			if _, err := resilience.NewClient(tt.cfg); err == nil {
				t.Error("NewClient accepted an invalid config")
			}
		})
	}
}

func TestDescribe(t *testing.T) {
	write := resilience.Retry{MaxAttempts: 5, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}
	trading := resilience.Default()
	trading.Hedge = resilience.Hedge{Delay: 30 * time.Millisecond}
	trading.Methods = map[string]resilience.MethodPolicy{
		"/" + ledgertest.Service + "/": {Timeout: 2 * time.Second},
		ledgertest.Apply:               {Retry: &write, Idempotency: resilience.Idempotent},
	}
	rc, err := resilience.NewClient(resilience.Config{
		Source:  resilience.SourceXDS,
		Default: resilience.Default(),
		Targets: map[string]resilience.Policy{"xds:///trading": trading},
	})
	if err != nil {
		t.Fatal(err)
	}
	def := resilience.Default()
	base := resilience.Effective{
		Source: "xds", Destination: "xds:///trading",
		Timeout: def.Timeout, Retry: def.Retry, Hedge: trading.Hedge, Budget: def.Budget, Breaker: def.Breaker,
		Bulkhead: def.Bulkhead, RateLimit: def.RateLimit, BreakerState: resilience.BreakerClosed,
		IdempotencyFrom: "none",
	}
	with := func(f func(e *resilience.Effective)) resilience.Effective { e := base; f(&e); return e }
	tests := []struct {
		dest, method string
		want         resilience.Effective
	}{
		{"xds:///trading", "", base},
		{"xds:///trading", ledgertest.Get, with(func(e *resilience.Effective) {
			e.Method, e.Override, e.Timeout = ledgertest.Get, "/"+ledgertest.Service+"/", 2*time.Second
			e.Idempotency, e.IdempotencyFrom, e.Hedged = resilience.NoSideEffects, "proto", true
		})},
		{"xds:///trading", ledgertest.Apply, with(func(e *resilience.Effective) {
			e.Method, e.Override, e.Retry = ledgertest.Apply, ledgertest.Apply, write
			e.Idempotency, e.IdempotencyFrom = resilience.Idempotent, "config"
		})},
		{"xds:///trading", "POST /trades", with(func(e *resilience.Effective) { e.Method = "POST /trades" })},
		{"xds:///trading", "GET /trades", with(func(e *resilience.Effective) {
			e.Method, e.Idempotency, e.IdempotencyFrom, e.Hedged = "GET /trades", resilience.NoSideEffects, "http-method", true
		})},
		{"xds:///other", "", with(func(e *resilience.Effective) { e.Destination, e.Hedge = "xds:///other", resilience.Hedge{} })},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, rc.Describe(tt.dest, tt.method)); diff != "" {
			t.Errorf("Describe(%q, %q) (-want +got):\n%s", tt.dest, tt.method, diff)
		}
	}
	if got := len(rc.Destinations()); got != 2 {
		t.Errorf("Destinations() has %d entries, want 2", got)
	}

	// The JSON the debug endpoint shows has readable durations.
	b, err := json.Marshal(rc.Describe("xds:///trading", ledgertest.Get))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	got := map[string]any{"source": m["source"], "timeout": m["timeout"], "idempotency": m["idempotency"],
		"backoff": m["retry"].(map[string]any)["initial_backoff"], "breaker_state": m["breaker_state"]}
	want := map[string]any{"source": "xds", "timeout": "2s", "idempotency": "NO_SIDE_EFFECTS", "backoff": "25ms", "breaker_state": "closed"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("JSON (-want +got):\n%s\n%s", diff, b)
	}
}

func TestUpdateKeepsUnchangedDestinations(t *testing.T) {
	rc, err := resilience.NewClient(resilience.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	rc.Describe("a", "")
	rc.Describe("b", "")
	p := resilience.Default()
	p.Timeout = time.Second
	if err := rc.Update(resilience.Config{Source: resilience.SourceConsul, Default: resilience.Default(), Targets: map[string]resilience.Policy{"b": p}}); err != nil {
		t.Fatal(err)
	}
	got := map[string]any{"a": rc.Describe("a", "").Timeout, "b": rc.Describe("b", "").Timeout, "source": rc.Describe("a", "").Source}
	want := map[string]any{"a": 15 * time.Second, "b": time.Second, "source": "consul"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if err := rc.Update(resilience.Config{Source: "nope"}); err == nil {
		t.Error("Update accepted an invalid config")
	}
}
