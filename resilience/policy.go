package resilience

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Policy is the resilience policy for calls to one destination. The zero
// value turns every mechanism off: one attempt, no timeout, no breaker, no
// limits. Use Default for the mesh's defaults and change what differs.
//
// Breaker, Bulkhead, RateLimit and Budget hold state per destination (one
// breaker for "xds:///trading", however many methods it has). Timeout, Retry
// and Hedge may be overridden per method through Methods.
//
// A Policy is a value: copy it freely. It is safe for concurrent reads.
type Policy struct {
	// Timeout bounds a whole call, all attempts and backoff included. A
	// caller's earlier deadline wins; gRPC sends the remaining time to the
	// server (grpc-timeout). Zero means no timeout beyond the caller's.
	// Streams are not bounded by it: they live as long as their context.
	Timeout time.Duration `json:"timeout"`
	// Retry says how often and how fast a failed call is tried again.
	Retry Retry `json:"retry"`
	// Hedge sends extra copies of slow calls. It applies only to calls
	// that are safe (NO_SIDE_EFFECTS, or GET/HEAD/OPTIONS), never to writes.
	Hedge Hedge `json:"hedge"`
	// Budget caps retries and hedges to a share of calls, per destination.
	Budget Budget `json:"budget"`
	// Breaker stops calls to a destination that keeps failing.
	Breaker Breaker `json:"breaker"`
	// Bulkhead caps concurrent attempts per destination.
	Bulkhead Bulkhead `json:"bulkhead"`
	// RateLimit caps attempts per second per destination.
	RateLimit RateLimit `json:"rate_limit"`
	// Methods overrides Timeout, Retry, Hedge and idempotency per method.
	// Keys are full gRPC methods ("/pkg.Service/Method"), a whole gRPC
	// service ("/pkg.Service/"), an HTTP method and path ("POST /trades"),
	// or an HTTP method alone ("PUT"). The most specific key wins.
	Methods map[string]MethodPolicy `json:"methods,omitempty"`
}

// MethodPolicy overrides a destination's Policy for some methods. Zero or
// nil fields inherit the destination's value.
type MethodPolicy struct {
	// Timeout overrides Policy.Timeout when non-zero.
	Timeout time.Duration `json:"timeout,omitempty"`
	// Retry overrides Policy.Retry when non-nil.
	Retry *Retry `json:"retry,omitempty"`
	// Hedge overrides Policy.Hedge when non-nil.
	Hedge *Hedge `json:"hedge,omitempty"`
	// Idempotency declares the method's side effects, overriding the proto
	// option idempotency_level and the HTTP method's semantics.
	// IdempotencyUnknown (the zero value) keeps what they say.
	Idempotency Idempotency `json:"idempotency,omitempty"`
}

// Retry configures retries. A call is retried only when the error allows it:
// see the package documentation for the exact rules. Every retry waits an
// exponential backoff with jitter, never zero.
type Retry struct {
	// MaxAttempts counts the first attempt: 1 (or 0) turns retries off.
	MaxAttempts int `json:"max_attempts"`
	// InitialBackoff is the wait before the first retry; each later wait
	// doubles up to MaxBackoff. Must be > 0 when MaxAttempts > 1.
	InitialBackoff time.Duration `json:"initial_backoff"`
	// MaxBackoff caps the wait. Zero means InitialBackoff (no growth).
	MaxBackoff time.Duration `json:"max_backoff"`
	// Jitter varies each wait randomly by up to this fraction, in [0, 1).
	Jitter float64 `json:"jitter"`
	// PerTryTimeout bounds each attempt. An attempt that runs out of it is
	// retried only for idempotent or keyed calls. Zero means none.
	PerTryTimeout time.Duration `json:"per_try_timeout"`
}

// Hedge configures hedging. Zero Delay turns hedging off.
type Hedge struct {
	// Delay is how long an attempt may run before another copy is sent.
	Delay time.Duration `json:"delay"`
	// MaxHedges is how many extra copies may be sent; 0 means 1.
	MaxHedges int `json:"max_hedges"`
}

// Budget is a retry budget in the style of Finagle and Linkerd: over any
// Window, retries and hedges may be at most Ratio times the calls plus
// MinPerSecond times the window's seconds. The zero value means no budget.
type Budget struct {
	// Ratio is the share of calls that may be retried, e.g. 0.2.
	Ratio float64 `json:"ratio"`
	// MinPerSecond is a floor so that low-traffic destinations can retry.
	MinPerSecond float64 `json:"min_per_second"`
	// Window is the period over which calls and retries are counted.
	Window time.Duration `json:"window"`
}

// Breaker configures the circuit breaker of a destination. It opens after
// ConsecutiveFailures calls in a row failed, or when at least FailureRate of
// at least MinRequests calls within Window failed. A call fails when its
// last attempt does: an attempt that a retry covers does not count, since
// one bad endpoint among several is for outlier detection to eject, not a
// reason to stop calling the destination. After OpenDelay the breaker lets
// HalfOpenProbes attempts through; that many successes close it and any
// failure opens it again.
// Failures end in UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN,
// DATA_LOSS or RESOURCE_EXHAUSTED (HTTP: transport errors and 5xx but 501);
// calls refused locally or canceled by the caller count neither way. The
// zero value turns it off.
type Breaker struct {
	ConsecutiveFailures uint          `json:"consecutive_failures"`
	FailureRate         float64       `json:"failure_rate"`
	MinRequests         uint          `json:"min_requests"`
	Window              time.Duration `json:"window"`
	OpenDelay           time.Duration `json:"open_delay"`
	HalfOpenProbes      uint          `json:"half_open_probes"`
}

func (b Breaker) enabled() bool { return b.ConsecutiveFailures > 0 || b.FailureRate > 0 }

// Bulkhead caps concurrent attempts to a destination. Zero MaxConcurrent
// turns it off. An attempt waits up to MaxWait for a slot, then fails with
// RESOURCE_EXHAUSTED without being sent.
type Bulkhead struct {
	MaxConcurrent uint          `json:"max_concurrent"`
	MaxWait       time.Duration `json:"max_wait"`
}

// RateLimit caps attempts to a destination to Requests per Per, spread
// evenly. An attempt over the limit fails with RESOURCE_EXHAUSTED without
// being sent. Zero Requests turns it off.
type RateLimit struct {
	Requests uint          `json:"requests"`
	Per      time.Duration `json:"per"`
}

// Default returns the mesh's defaults, chosen to be safe for money:
//
//   - Timeout 15s per call.
//   - Retry: 3 attempts, backoff 25ms doubling to 1s, jitter 0.2, no per-try
//     timeout. Which errors are retried depends on the call's idempotency
//     (package documentation); there is never a retry without a delay.
//   - Budget: 20% of calls plus 10 retries/s, over 10s.
//   - Breaker: opens on 5 failed calls in a row or 50% of ≥20 calls in
//     10s; half-opens after 3s with 3 probes.
//   - Bulkhead: 1024 concurrent attempts per destination, no waiting.
//   - No rate limit, no hedging.
func Default() Policy {
	return Policy{
		Timeout: 15 * time.Second,
		Retry: Retry{
			MaxAttempts:    3,
			InitialBackoff: 25 * time.Millisecond,
			MaxBackoff:     time.Second,
			Jitter:         0.2,
		},
		Budget: Budget{Ratio: 0.2, MinPerSecond: 10, Window: 10 * time.Second},
		Breaker: Breaker{
			ConsecutiveFailures: 5,
			FailureRate:         0.5,
			MinRequests:         20,
			Window:              10 * time.Second,
			OpenDelay:           3 * time.Second,
			HalfOpenProbes:      3,
		},
		Bulkhead: Bulkhead{MaxConcurrent: 1024},
	}
}

// Config is the client-side configuration: a default policy and per
// destination replacements. Destinations are the gRPC target as passed to
// grpc.NewClient ("xds:///trading") or the HTTP request's host ("trading:8443").
type Config struct {
	// Source names where the config came from: "code" (the default when
	// empty), "xds" or "consul". Describe reports it.
	Source string `json:"source"`
	// Default applies to destinations not in Targets.
	Default Policy `json:"default"`
	// Targets replaces Default, as a whole, for some destinations.
	Targets map[string]Policy `json:"targets,omitempty"`
}

// DefaultConfig returns a Config from code with Default for every destination.
func DefaultConfig() Config { return Config{Source: SourceCode, Default: Default()} }

// Config sources for Config.Source.
const (
	SourceCode   = "code"
	SourceXDS    = "xds"
	SourceConsul = "consul"
)

// Validate reports every invalid field of c, naming it and the expected form.
func (c Config) Validate() error {
	var errs []error
	switch c.Source {
	case "", SourceCode, SourceXDS, SourceConsul:
	default:
		errs = append(errs, fmt.Errorf("source %q: want %q, %q or %q", c.Source, SourceCode, SourceXDS, SourceConsul))
	}
	errs = append(errs, c.Default.validate("default")...)
	for t, p := range c.Targets {
		errs = append(errs, p.validate(fmt.Sprintf("targets[%q]", t))...)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("resilience: invalid config: %w", err)
	}
	return nil
}

func (p Policy) validate(at string) []error {
	var errs []error
	bad := func(field string, v any, want string) {
		errs = append(errs, fmt.Errorf("%s.%s = %v: %s", at, field, v, want))
	}
	if p.Timeout < 0 {
		bad("timeout", p.Timeout, "want >= 0 (0 means no timeout)")
	}
	errs = append(errs, p.Retry.validate(at+".retry")...)
	errs = append(errs, p.Hedge.validate(at+".hedge")...)
	if p.Budget.Ratio < 0 || p.Budget.MinPerSecond < 0 {
		bad("budget", p.Budget, "ratio and min_per_second must be >= 0")
	}
	if (p.Budget.Ratio > 0 || p.Budget.MinPerSecond > 0) && p.Budget.Window <= 0 {
		bad("budget.window", p.Budget.Window, "want > 0, e.g. 10s, when a budget is set")
	}
	if b := p.Breaker; b.enabled() {
		if b.FailureRate < 0 || b.FailureRate > 1 {
			bad("breaker.failure_rate", b.FailureRate, "want a fraction in [0, 1], e.g. 0.5")
		}
		if b.FailureRate > 0 && (b.MinRequests == 0 || b.Window <= 0) {
			bad("breaker", b, "failure_rate needs min_requests > 0 and window > 0")
		}
		if b.OpenDelay <= 0 {
			bad("breaker.open_delay", b.OpenDelay, "want > 0, e.g. 3s")
		}
		if b.HalfOpenProbes == 0 {
			bad("breaker.half_open_probes", b.HalfOpenProbes, "want > 0, e.g. 3")
		}
	}
	if p.Bulkhead.MaxWait < 0 {
		bad("bulkhead.max_wait", p.Bulkhead.MaxWait, "want >= 0")
	}
	if p.RateLimit.Requests > 0 && p.RateLimit.Per <= 0 {
		bad("rate_limit.per", p.RateLimit.Per, "want > 0, e.g. 1s, when requests is set")
	}
	for k, m := range p.Methods {
		mat := fmt.Sprintf("%s.methods[%q]", at, k)
		if !validMethodKey(k) {
			errs = append(errs, fmt.Errorf("%s: key must be \"/pkg.Service/Method\", \"/pkg.Service/\", \"VERB /path\" or \"VERB\"", mat))
		}
		if m.Timeout < 0 {
			errs = append(errs, fmt.Errorf("%s.timeout = %v: want >= 0", mat, m.Timeout))
		}
		if m.Retry != nil {
			errs = append(errs, m.Retry.validate(mat+".retry")...)
		}
		if m.Hedge != nil {
			errs = append(errs, m.Hedge.validate(mat+".hedge")...)
		}
		if m.Idempotency < IdempotencyUnknown || m.Idempotency > NoSideEffects {
			errs = append(errs, fmt.Errorf("%s.idempotency = %d: want IDEMPOTENCY_UNKNOWN, IDEMPOTENT or NO_SIDE_EFFECTS", mat, m.Idempotency))
		}
	}
	return errs
}

func (r Retry) validate(at string) []error {
	var errs []error
	if r.MaxAttempts < 0 {
		errs = append(errs, fmt.Errorf("%s.max_attempts = %d: want >= 0", at, r.MaxAttempts))
	}
	if r.MaxAttempts > 1 && r.InitialBackoff <= 0 {
		errs = append(errs, fmt.Errorf("%s.initial_backoff = %v: want > 0 when retrying (a retry without delay turns one failure into a storm)", at, r.InitialBackoff))
	}
	if r.MaxBackoff != 0 && r.MaxBackoff < r.InitialBackoff {
		errs = append(errs, fmt.Errorf("%s.max_backoff = %v: want >= initial_backoff (%v) or 0", at, r.MaxBackoff, r.InitialBackoff))
	}
	if r.Jitter < 0 || r.Jitter >= 1 {
		errs = append(errs, fmt.Errorf("%s.jitter = %v: want a fraction in [0, 1)", at, r.Jitter))
	}
	if r.PerTryTimeout < 0 {
		errs = append(errs, fmt.Errorf("%s.per_try_timeout = %v: want >= 0", at, r.PerTryTimeout))
	}
	return errs
}

func (h Hedge) validate(at string) []error {
	if h.Delay < 0 || h.MaxHedges < 0 {
		return []error{fmt.Errorf("%s = %+v: delay and max_hedges must be >= 0", at, h)}
	}
	return nil
}

func validMethodKey(k string) bool {
	if strings.HasPrefix(k, "/") {
		return strings.Count(k, "/") == 2 && len(k) > 2
	}
	verb, path, hasPath := strings.Cut(k, " ")
	if verb == "" || strings.ToUpper(verb) != verb {
		return false
	}
	return !hasPath || strings.HasPrefix(path, "/")
}

// policyFor returns the policy for destination dest.
func (c Config) policyFor(dest string) Policy {
	if p, ok := c.Targets[dest]; ok {
		return p
	}
	return c.Default
}

// methodOverride returns the most specific MethodPolicy for a gRPC method
// ("/pkg.Svc/M") or an HTTP "VERB /path", and the key that matched.
func (p Policy) methodOverride(method string) (MethodPolicy, string, bool) {
	if len(p.Methods) == 0 {
		return MethodPolicy{}, "", false
	}
	if m, ok := p.Methods[method]; ok {
		return m, method, true
	}
	if strings.HasPrefix(method, "/") {
		if i := strings.LastIndexByte(method, '/'); i > 0 {
			if m, ok := p.Methods[method[:i+1]]; ok {
				return m, method[:i+1], true
			}
		}
		return MethodPolicy{}, "", false
	}
	if verb, _, ok := strings.Cut(method, " "); ok {
		if m, ok := p.Methods[verb]; ok {
			return m, verb, true
		}
	}
	return MethodPolicy{}, "", false
}
