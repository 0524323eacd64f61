package resilience

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/failsafe-go/failsafe-go"
	"github.com/failsafe-go/failsafe-go/bulkhead"
	"github.com/failsafe-go/failsafe-go/circuitbreaker"
	"github.com/failsafe-go/failsafe-go/hedgepolicy"
	"github.com/failsafe-go/failsafe-go/ratelimiter"
	"github.com/failsafe-go/failsafe-go/retrypolicy"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// Observer receives the events the mesh turns into metrics and logs. Every
// field may be nil. Functions are called synchronously on the calling
// goroutine (OnBreakerStateChange while the breaker is locked), so they must
// be fast, must not block and must not call back into the Client.
type Observer struct {
	// OnRetry is called before each retry is sent.
	OnRetry func(RetryEvent)
	// OnHedge is called before each hedged copy is sent.
	OnHedge func(HedgeEvent)
	// OnBreakerStateChange is called when a destination's breaker changes state.
	OnBreakerStateChange func(BreakerEvent)
	// OnBudgetExhausted is called when a retry or hedge was denied by the budget.
	OnBudgetExhausted func(BudgetEvent)
	// OnRejected is called when an attempt was refused locally (breaker
	// open, bulkhead full, rate limited) and so never sent.
	OnRejected func(RejectedEvent)
}

// RetryEvent describes a retry about to be sent.
type RetryEvent struct {
	Destination string
	Method      string // "/pkg.Service/Method" or "VERB /path"
	Attempt     int    // 2 for the first retry
	Err         error  // why the previous attempt failed
}

// HedgeEvent describes a hedged copy about to be sent.
type HedgeEvent struct {
	Destination string
	Method      string
}

// BreakerEvent describes a breaker state change.
type BreakerEvent struct {
	Destination string
	From, To    BreakerState
}

// BudgetEvent describes a retry or hedge the budget denied.
type BudgetEvent struct {
	Destination string
	Method      string
	Kind        string // "retry" or "hedge"
}

// RejectedEvent describes an attempt refused before it was sent.
type RejectedEvent struct {
	Destination string
	Method      string
	Err         *RejectedError
}

// BreakerState is a circuit breaker's state.
type BreakerState string

// Breaker states.
const (
	BreakerClosed   BreakerState = "closed"
	BreakerOpen     BreakerState = "open"
	BreakerHalfOpen BreakerState = "half-open"
	BreakerDisabled BreakerState = "disabled"
)

func breakerState(s circuitbreaker.State) BreakerState {
	switch s {
	case circuitbreaker.OpenState:
		return BreakerOpen
	case circuitbreaker.HalfOpenState:
		return BreakerHalfOpen
	}
	return BreakerClosed
}

// RejectedError is returned for an attempt the client refused to send:
// the destination's breaker is open, its bulkhead is full or its rate limit
// is reached. It unwraps to circuitbreaker.ErrOpen, bulkhead.ErrFull or
// ratelimiter.ErrExceeded. Over gRPC it carries UNAVAILABLE (breaker) or
// RESOURCE_EXHAUSTED (bulkhead, rate limit). Such an attempt is not retried:
// the local limit would refuse the retry as well.
type RejectedError struct {
	Destination string
	Err         error
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("resilience: call to %s not sent: %v", e.Destination, e.Err)
}

func (e *RejectedError) Unwrap() error { return e.Err }

// GRPCStatus lets status.Code and status.FromError read the code.
func (e *RejectedError) GRPCStatus() *status.Status {
	code := codes.ResourceExhausted
	if errors.Is(e.Err, circuitbreaker.ErrOpen) {
		code = codes.Unavailable
	}
	return status.New(code, e.Error())
}

// Option configures a Client. Options are applied in order.
type Option interface{ apply(*Client) }

type optionFunc func(*Client)

func (f optionFunc) apply(c *Client) { f(c) }

// WithObserver sets the event callbacks. Default: none.
func WithObserver(o Observer) Option { return optionFunc(func(c *Client) { c.obs = o }) }

// WithLogger sets a logger for rare internal events (a policy rebuilt after
// Update). Default: silent.
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(c *Client) { c.log = l.With("component", "resilience") })
}

// WithDescriptors sets where proto method descriptors (and their
// idempotency_level) are looked up. Default: protoregistry.GlobalFiles.
func WithDescriptors(r DescriptorResolver) Option {
	return optionFunc(func(c *Client) { c.levels = &protoLevels{files: r} })
}

// Client applies resilience policies to outgoing calls: gRPC through
// UnaryClientInterceptor and StreamClientInterceptor, HTTP through
// RoundTripper. It keeps one breaker, bulkhead, rate limiter and budget per
// destination. A Client is safe for concurrent use and starts no goroutines.
type Client struct {
	obs    Observer
	log    *slog.Logger
	levels *protoLevels
	now    func() time.Time

	// noFastPath sends every attempt through the retry executor, as before
	// the fast path existed; set only by tests (export_test.go), which
	// compare the two paths.
	noFastPath bool

	cfg   atomic.Pointer[Config]
	mu    sync.Mutex // serializes creation of destinations
	dests atomic.Pointer[map[string]*destination]
}

// NewClient returns a Client for cfg, or an error naming every invalid field.
func NewClient(cfg Config, opts ...Option) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Client{
		log:    slog.New(slog.DiscardHandler),
		levels: &protoLevels{files: protoregistry.GlobalFiles},
		now:    time.Now,
	}
	for _, o := range opts {
		o.apply(c)
	}
	if cfg.Source == "" {
		cfg.Source = SourceCode
	}
	c.cfg.Store(&cfg)
	empty := map[string]*destination{}
	c.dests.Store(&empty)
	return c, nil
}

// Update replaces the configuration, e.g. when xDS or Consul sends a new
// one. Destinations whose policy changed get new state (their breaker starts
// closed); others keep theirs. Calls in flight finish under the old policy.
func (c *Client) Update(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Source == "" {
		cfg.Source = SourceCode
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cfg.Store(&cfg)
	old := *c.dests.Load()
	next := make(map[string]*destination, len(old))
	for name, d := range old {
		if policiesEqual(d.policy, cfg.policyFor(name)) {
			next[name] = d
		} else {
			c.log.Info("policy changed; destination state reset", "destination", name, "source", cfg.Source)
		}
	}
	c.dests.Store(&next)
	return nil
}

// destination returns the state for dest, creating it on first use.
func (c *Client) destination(dest string) *destination {
	if d, ok := (*c.dests.Load())[dest]; ok {
		return d
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	cur := *c.dests.Load()
	if d, ok := cur[dest]; ok {
		return d
	}
	d := c.newDestination(dest, c.cfg.Load().policyFor(dest))
	next := make(map[string]*destination, len(cur)+1)
	for k, v := range cur {
		next[k] = v
	}
	next[dest] = d
	c.dests.Store(&next)
	return d
}

// destination is the per-destination state. Immutable after creation but
// for the failsafe policies' own state and the methods cache.
type destination struct {
	name      string
	policy    Policy
	budget    *retryBudget
	breaker   circuitbreaker.CircuitBreaker[any]
	bulkhead  bulkhead.Bulkhead[any]
	limiter   ratelimiter.RateLimiter[any]
	bhWait    time.Duration
	consec    atomic.Int64
	consecMax int64
	rateRule  bool // the breaker also opens on a failure rate
	// breakerClosed mirrors the breaker's state, so that a closed breaker
	// costs no lock per attempt.
	breakerClosed atomic.Bool
	methods       sync.Map // method-policy key -> *methodState
}

func (c *Client) newDestination(name string, p Policy) *destination {
	d := &destination{name: name, policy: p, budget: newRetryBudget(p.Budget, c.now)}
	if b := p.Breaker; b.enabled() {
		bb := circuitbreaker.NewBuilder[any]().
			WithDelay(b.OpenDelay).
			WithJitterFactor(0.2).
			WithSuccessThreshold(b.HalfOpenProbes)
		if b.FailureRate > 0 {
			d.rateRule = true
			bb = bb.WithFailureRateThreshold(b.FailureRate, b.MinRequests, b.Window)
		} else {
			bb = bb.WithFailureThreshold(b.ConsecutiveFailures)
		}
		// failsafe-go breakers threshold on one thing; the consecutive
		// count is kept here and opens the breaker by hand. Without a
		// rate rule failsafe-go is told only of probes (callEnded), so
		// its own threshold never fires.
		d.consecMax = int64(b.ConsecutiveFailures)
		d.breakerClosed.Store(true)
		obs := c.obs.OnBreakerStateChange
		bb = bb.OnStateChanged(func(e circuitbreaker.StateChangedEvent) {
			d.breakerClosed.Store(e.NewState == circuitbreaker.ClosedState)
			if e.NewState != circuitbreaker.OpenState {
				d.consec.Store(0)
			}
			if obs != nil {
				obs(BreakerEvent{Destination: name, From: breakerState(e.OldState), To: breakerState(e.NewState)})
			}
		})
		d.breaker = bb.Build()
	}
	if p.Bulkhead.MaxConcurrent > 0 {
		d.bulkhead = bulkhead.New[any](p.Bulkhead.MaxConcurrent)
		d.bhWait = p.Bulkhead.MaxWait
	}
	if p.RateLimit.Requests > 0 {
		d.limiter = ratelimiter.NewSmooth[any](p.RateLimit.Requests, p.RateLimit.Per)
	}
	return d
}

// methodState is the resolved policy of one method (or one override key).
type methodState struct {
	timeout     time.Duration
	retry       Retry
	hedge       Hedge
	declared    Idempotency // from MethodPolicy, IdempotencyUnknown if none
	retryPolicy retrypolicy.RetryPolicy[any]
	hedgePolicy hedgepolicy.HedgePolicy[any]
	// Executors built once from the policies (failsafe-go executors are
	// safe for concurrent use); nil when the policies they need are.
	retryExec, hedgeExec, retryHedgeExec failsafe.Executor[any]
}

// resolve returns the methodState for a method key as matched by
// Policy.methodOverride; the empty key is the destination's own policy.
func (d *destination) resolve(method string) *methodState {
	mp, key, _ := d.policy.methodOverride(method)
	if v, ok := d.methods.Load(key); ok {
		return v.(*methodState)
	}
	ms := &methodState{
		timeout:  d.policy.Timeout,
		retry:    d.policy.Retry,
		hedge:    d.policy.Hedge,
		declared: mp.Idempotency,
	}
	if mp.Timeout != 0 {
		ms.timeout = mp.Timeout
	}
	if mp.Retry != nil {
		ms.retry = *mp.Retry
	}
	if mp.Hedge != nil {
		ms.hedge = *mp.Hedge
	}
	if ms.retry.MaxAttempts > 1 {
		maxB := ms.retry.MaxBackoff
		if maxB < ms.retry.InitialBackoff {
			maxB = ms.retry.InitialBackoff
		}
		rb := retrypolicy.NewBuilder[any]().
			HandleIf(func(_ any, err error) bool { return isRetryable(err) }).
			WithMaxAttempts(ms.retry.MaxAttempts).
			ReturnLastFailure()
		if maxB > ms.retry.InitialBackoff {
			rb = rb.WithBackoff(ms.retry.InitialBackoff, maxB)
		} else {
			rb = rb.WithDelay(ms.retry.InitialBackoff)
		}
		if ms.retry.Jitter > 0 {
			rb = rb.WithJitterFactor(ms.retry.Jitter)
		}
		ms.retryPolicy = rb.Build()
	}
	if ms.hedge.Delay > 0 {
		n := ms.hedge.MaxHedges
		if n == 0 {
			n = 1
		}
		ms.hedgePolicy = hedgepolicy.NewBuilderWithDelay[any](ms.hedge.Delay).
			WithMaxHedges(n).
			// A success or a final error wins; a retryable failure or a
			// hedge the budget denied leaves the others running.
			CancelIf(func(_ any, err error) bool { return !isRetryable(err) && !errors.Is(err, errHedgeDenied) }).
			Build()
	}
	if ms.retryPolicy != nil {
		ms.retryExec = failsafe.With[any](ms.retryPolicy)
	}
	if ms.hedgePolicy != nil {
		ms.hedgeExec = failsafe.With[any](ms.hedgePolicy)
		if ms.retryPolicy != nil {
			ms.retryHedgeExec = failsafe.With[any](ms.retryPolicy, ms.hedgePolicy)
		}
	}
	// Keys are bounded by the config (override keys) plus gRPC method names.
	v, _ := d.methods.LoadOrStore(key, ms)
	return v.(*methodState)
}

// executor returns the failsafe executor for one call, or nil when a
// single attempt suffices.
func (ms *methodState) executor(hedge bool) failsafe.Executor[any] {
	switch {
	case ms.retryPolicy != nil && hedge:
		return ms.retryHedgeExec
	case ms.retryPolicy != nil:
		return ms.retryExec
	case hedge:
		return ms.hedgeExec
	}
	return nil
}

// admit runs the local limits for one attempt: rate limit, bulkhead,
// breaker. On success the returned permit must be released with the
// attempt's outcome for the breaker (failure or not) to release what admit
// took. A permit is a value, so admitting allocates nothing.
func (d *destination) admit(ctx context.Context, c *Client, method string) (permit, error) {
	if d.limiter != nil && !d.limiter.TryAcquirePermit() {
		return permit{}, c.reject(d, method, ratelimiter.ErrExceeded)
	}
	if d.bulkhead != nil {
		if d.bhWait > 0 {
			if err := d.bulkhead.AcquirePermitWithMaxWait(ctx, d.bhWait); err != nil {
				return permit{}, c.reject(d, method, bulkhead.ErrFull)
			}
		} else if !d.bulkhead.TryAcquirePermit() {
			return permit{}, c.reject(d, method, bulkhead.ErrFull)
		}
	}
	// A closed breaker admits everything and judges whole calls
	// (callEnded); an open or half-open one hands out probe permits, and
	// their attempts are judged one by one (release). failsafe-go moves
	// from open to half-open inside TryAcquirePermit, so a permit taken
	// while the breaker was not closed is a probe's.
	probe := false
	if d.breaker != nil && !d.breakerClosed.Load() {
		if !d.breaker.TryAcquirePermit() {
			if d.bulkhead != nil {
				d.bulkhead.ReleasePermit()
			}
			return permit{}, c.reject(d, method, circuitbreaker.ErrOpen)
		}
		probe = true
	}
	return permit{d: d, probe: probe}, nil
}

// permit is what admit took for one attempt.
type permit struct {
	d     *destination
	probe bool // a half-open breaker's probe, judged by its own outcome
}

// release gives back what admit took. A probe's outcome goes to the
// breaker: failure counts against the destination; neutral (a canceled
// attempt) counts neither way but gives the probe permit back.
func (p permit) release(failure, neutral bool) {
	d := p.d
	if d.bulkhead != nil {
		d.bulkhead.ReleasePermit()
	}
	if !p.probe {
		return
	}
	if failure && !neutral {
		d.breaker.RecordFailure()
	} else {
		// failsafe-go releases permits only by recording.
		d.breaker.RecordSuccess()
	}
}

// callEnded judges a call for a closed breaker: both of its rules, failed
// calls in a row and the failure rate, count calls, not attempts. A call
// fails when its last attempt does. An attempt that a retry covers says
// that one endpoint is bad, which is for outlier detection to eject;
// counting it would let a few concurrent calls that all first reached one
// bad endpoint (the only one connected yet, say), or one bad endpoint of
// two, shut the whole destination. Rejected and canceled calls are not
// judged.
func (d *destination) callEnded(failure bool) {
	if d.breaker == nil || !d.breakerClosed.Load() {
		return
	}
	if !failure {
		if d.rateRule {
			d.breaker.RecordSuccess()
		}
		if d.consec.Load() != 0 {
			d.consec.Store(0)
		}
		return
	}
	if d.rateRule {
		d.breaker.RecordFailure()
	}
	if n := d.consec.Add(1); d.consecMax > 0 && n >= d.consecMax && d.breaker.IsClosed() {
		d.breaker.Open()
	}
}

// isRejected reports whether err is a local refusal (*RejectedError).
func isRejected(err error) bool {
	var re *RejectedError
	return errors.As(err, &re)
}

func (c *Client) reject(d *destination, method string, err error) error {
	re := &RejectedError{Destination: d.name, Err: err}
	if c.obs.OnRejected != nil {
		c.obs.OnRejected(RejectedEvent{Destination: d.name, Method: method, Err: re})
	}
	return re
}

// retryableError marks an attempt's error as one the retry may repeat.
type retryableError struct{ err error }

func (e *retryableError) Error() string { return e.err.Error() }
func (e *retryableError) Unwrap() error { return e.err }

// isRetryable reports whether err is or wraps a *retryableError. A loop,
// not errors.As, so that the hot path does not allocate.
func isRetryable(err error) bool {
	for err != nil {
		if _, ok := err.(*retryableError); ok {
			return true
		}
		err = errors.Unwrap(err)
	}
	return false
}

// firstAttemptFinal reports whether the outcome err of a call's first
// attempt, made outside the retry policy's executor, ends the call, and with
// which error. It decides as that executor does after an attempt: if the
// call's context ended meanwhile, the call ends with the context's error
// (even after a success); otherwise a success or an error the rules do not
// retry ends it as it is. A retryable error does not end it: the executor
// takes over through replayFirst.
func firstAttemptFinal(ctx context.Context, err error) (bool, error) {
	if cerr := ctx.Err(); cerr != nil {
		return true, cerr
	}
	if isRetryable(err) {
		return false, nil
	}
	return true, err
}

// replayFirst lets the retry policy's executor take over a call whose
// first attempt already ran (and failed with *first, retryable): on the
// execution's first attempt it returns that error, clears *first and
// reports true, so the executor counts the attempt, backs off and retries
// as if it had made it. Later attempts report false and run for real. Only
// calls without hedging take this path, so attempts are sequential and
// *first needs no lock.
func replayFirst(e failsafe.Execution[any], first *error) (error, bool) {
	if *first == nil || e.IsRetry() || e.IsHedge() {
		return nil, false
	}
	err := *first
	*first = nil
	return err, true
}

// errHedgeDenied is what a hedge the budget denied returns; it is never the
// call's result unless every other attempt vanished.
var errHedgeDenied = errors.New("resilience: hedge denied by budget")

// unwrapResult strips the markers from the final error.
func unwrapResult(err error) error {
	if r, ok := err.(*retryableError); ok {
		return r.err
	}
	return err
}

// attemptGroup tracks the attempts of one call so that the call returns
// only after all of them ended. failsafe-go starts hedges on goroutines of
// its own and may return before a late hedge has begun; such an attempt
// finds the group finished and sends nothing.
type attemptGroup struct {
	mu       sync.Mutex
	finished bool
	wg       sync.WaitGroup
}

// enter registers an attempt, or reports false if the call already returned.
func (g *attemptGroup) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.finished {
		return false
	}
	g.wg.Add(1)
	return true
}

func (g *attemptGroup) exit() { g.wg.Done() }

// finish refuses new attempts and waits for the running ones.
func (g *attemptGroup) finish() {
	g.mu.Lock()
	g.finished = true
	g.mu.Unlock()
	g.wg.Wait()
}

// errCallDone is what an attempt that started after its call returned
// reports; nobody sees it.
var errCallDone = errors.New("resilience: call already returned")

// attemptLog is shared by the attempts of one call (hedges run in parallel).
type attemptLog struct {
	mu      sync.Mutex
	lastErr error
}

func (a *attemptLog) set(err error) {
	a.mu.Lock()
	a.lastErr = err
	a.mu.Unlock()
}

func (a *attemptLog) get() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lastErr
}

// gate checks the budget before a retry or a hedge and reports the event.
// It returns a non-nil error when the attempt must not be sent.
func (c *Client) gate(d *destination, method string, isHedge, isRetry bool, attempt int, log *attemptLog) error {
	switch {
	case isHedge:
		if !d.budget.withdraw() {
			if c.obs.OnBudgetExhausted != nil {
				c.obs.OnBudgetExhausted(BudgetEvent{Destination: d.name, Method: method, Kind: "hedge"})
			}
			if last := log.get(); last != nil {
				return last
			}
			return errHedgeDenied
		}
		if c.obs.OnHedge != nil {
			c.obs.OnHedge(HedgeEvent{Destination: d.name, Method: method})
		}
	case isRetry:
		last := log.get()
		if !d.budget.withdraw() {
			if c.obs.OnBudgetExhausted != nil {
				c.obs.OnBudgetExhausted(BudgetEvent{Destination: d.name, Method: method, Kind: "retry"})
			}
			// Not marked retryable: the retry policy stops here and the
			// caller gets the real error, not a budget error.
			return unwrapResult(last)
		}
		if c.obs.OnRetry != nil {
			c.obs.OnRetry(RetryEvent{Destination: d.name, Method: method, Attempt: attempt, Err: unwrapResult(last)})
		}
	}
	return nil
}

func policiesEqual(a, b Policy) bool {
	if len(a.Methods) != len(b.Methods) {
		return false
	}
	for k, am := range a.Methods {
		bm, ok := b.Methods[k]
		if !ok || am.Timeout != bm.Timeout || am.Idempotency != bm.Idempotency ||
			!ptrEqual(am.Retry, bm.Retry) || !ptrEqual(am.Hedge, bm.Hedge) {
			return false
		}
	}
	a.Methods, b.Methods = nil, nil
	return a.Timeout == b.Timeout && a.Retry == b.Retry && a.Hedge == b.Hedge && a.Budget == b.Budget &&
		a.Breaker == b.Breaker && a.Bulkhead == b.Bulkhead && a.RateLimit == b.RateLimit
}

func ptrEqual[T comparable](a, b *T) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}
