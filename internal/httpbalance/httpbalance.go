// Package httpbalance picks endpoints for the mesh's HTTP client: round
// robin, least request (power of N choices) or pick first, over the
// endpoint set discovery hands out, with passive ejection of endpoints that
// cannot be connected to.
//
// An endpoint whose connection fails is ejected for a backoff that starts at
// EjectMin and doubles up to EjectMax while it keeps failing; a success
// resets it. Ejected endpoints are skipped unless every endpoint is ejected,
// in which case all are tried (a dead set is no worse than no set).
package httpbalance

import (
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Policy is a balancing policy.
type Policy int

const (
	RoundRobin Policy = iota
	LeastRequest
	PickFirst
)

// Endpoint is one backend: where it is and whom it must be.
type Endpoint struct {
	Addr string
	ID   spiffeid.ID // zero: the caller's default check applies
	// Weight is the endpoint's share for RoundRobin, relative to the
	// others (smooth weighted round robin); 0 counts as 1.
	Weight int
}

// Config configures a Balancer. Zero fields take the defaults given.
type Config struct {
	Policy Policy
	// Choices is how many random endpoints LeastRequest compares (default 2).
	Choices int
	// EjectMin and EjectMax bound how long a failing endpoint is skipped
	// (defaults 1s and 30s).
	EjectMin, EjectMax time.Duration
	// Now is the clock (default time.Now), for tests.
	Now func() time.Time
}

// ErrNoEndpoints says the endpoint set is empty or every endpoint was
// already tried for this request.
var ErrNoEndpoints = errors.New("httpbalance: no endpoint available")

// Balancer picks endpoints. It is safe for concurrent use.
type Balancer struct {
	cfg Config

	mu  sync.Mutex
	eps []*state
}

type state struct {
	Endpoint
	inflight     atomic.Int64
	ejectedUntil time.Time // guarded by Balancer.mu
	failures     int       // guarded by Balancer.mu
	current      int       // smooth weighted round robin state, guarded by Balancer.mu
}

// New returns a Balancer with no endpoints.
func New(cfg Config) *Balancer {
	if cfg.Choices < 2 {
		cfg.Choices = 2
	}
	if cfg.EjectMin <= 0 {
		cfg.EjectMin = time.Second
	}
	if cfg.EjectMax < cfg.EjectMin {
		cfg.EjectMax = max(30*time.Second, cfg.EjectMin)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Balancer{cfg: cfg}
}

// Update replaces the endpoint set. Endpoints that stay keep their
// in-flight counts and ejection state. It reports whether any endpoint was
// removed.
func (b *Balancer) Update(eps []Endpoint) (removed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	old := make(map[Endpoint]*state, len(b.eps))
	for _, s := range b.eps {
		old[s.Endpoint] = s
	}
	next := make([]*state, 0, len(eps))
	for _, e := range eps {
		if s, ok := old[e]; ok {
			next = append(next, s)
			delete(old, e)
			continue
		}
		next = append(next, &state{Endpoint: e})
	}
	b.eps = next
	return len(old) > 0
}

// SetPolicy changes the policy for the next picks (a control plane's
// choice arriving after New).
func (b *Balancer) SetPolicy(p Policy) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cfg.Policy = p
}

// ID returns the expected SPIFFE ID of the endpoint at addr, if the set
// has one.
func (b *Balancer) ID(addr string) (spiffeid.ID, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.eps {
		if s.Addr == addr {
			return s.ID, true
		}
	}
	return spiffeid.ID{}, false
}

// String names the policy: "round_robin", "least_request", "pick_first".
func (p Policy) String() string {
	switch p {
	case RoundRobin:
		return "round_robin"
	case LeastRequest:
		return "least_request"
	case PickFirst:
		return "pick_first"
	}
	return "unknown"
}

// EndpointState is an endpoint and whether it is ejected now.
type EndpointState struct {
	Endpoint
	Ejected bool
}

// Endpoints returns the endpoint set, in discovery's order, and the
// policy in force.
func (b *Balancer) Endpoints() ([]EndpointState, Policy) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.cfg.Now()
	out := make([]EndpointState, len(b.eps))
	for i, s := range b.eps {
		out[i] = EndpointState{Endpoint: s.Endpoint, Ejected: now.Before(s.ejectedUntil)}
	}
	return out, b.cfg.Policy
}

// Len is the size of the endpoint set.
func (b *Balancer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.eps)
}

// Pick is one chosen endpoint. Call Done exactly once when the request
// ends (the response body is closed or the round trip failed).
type Pick struct {
	Endpoint
	b    *Balancer
	s    *state
	once sync.Once
}

// Done ends the request on the endpoint.
func (p *Pick) Done() { p.once.Do(func() { p.s.inflight.Add(-1) }) }

// Failed ejects the endpoint: its connection could not be made.
func (p *Pick) Failed() {
	p.b.mu.Lock()
	defer p.b.mu.Unlock()
	d := p.b.cfg.EjectMin << min(p.s.failures, 16)
	d = min(d, p.b.cfg.EjectMax)
	p.s.failures++
	p.s.ejectedUntil = p.b.cfg.Now().Add(d)
}

// Succeeded clears the endpoint's failure history.
func (p *Pick) Succeeded() {
	p.b.mu.Lock()
	defer p.b.mu.Unlock()
	p.s.failures = 0
	p.s.ejectedUntil = time.Time{}
}

// Pick chooses an endpoint not in tried (addresses already attempted for
// this request).
func (b *Balancer) Pick(tried []string) (*Pick, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.cfg.Now()
	var live, all []*state
	for _, s := range b.eps {
		if slices.Contains(tried, s.Addr) {
			continue
		}
		all = append(all, s)
		if !now.Before(s.ejectedUntil) {
			live = append(live, s)
		}
	}
	if len(live) == 0 {
		live = all // panic mode: every candidate is ejected
	}
	if len(live) == 0 {
		return nil, ErrNoEndpoints
	}
	var s *state
	switch b.cfg.Policy {
	case PickFirst:
		s = live[0]
	case LeastRequest:
		n := min(b.cfg.Choices, len(live))
		for _, i := range rand.Perm(len(live))[:n] {
			if c := live[i]; s == nil || c.inflight.Load() < s.inflight.Load() {
				s = c
			}
		}
	default:
		// Smooth weighted round robin (as in nginx): every candidate gains
		// its weight, the one with the most is picked and pays the total
		// back. Equal weights give plain rotation.
		total := 0
		for _, c := range live {
			w := max(c.Weight, 1)
			c.current += w
			total += w
			if s == nil || c.current > s.current {
				s = c
			}
		}
		s.current -= total
	}
	s.inflight.Add(1)
	return &Pick{Endpoint: s.Endpoint, b: b, s: s}, nil
}
