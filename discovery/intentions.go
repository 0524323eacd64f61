package discovery

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/gridmesh/gridmesh/internal/consulwatch"
)

// IntentionsConfig says whose intentions to watch and what applies when
// none matches.
type IntentionsConfig struct {
	// Service is the destination service: the server's own Consul name.
	// Required.
	Service string
	// DefaultAllow allows callers no intention matches. Default false:
	// deny, as Consul does with ACLs in default-deny mode.
	DefaultAllow bool
	// SourceName maps a caller's SPIFFE ID to the Consul service name that
	// intentions name. Default: ServiceName, for callers in
	// Config.TrustDomain only when that is set (a federated trust domain's
	// "web" is not this one's). A caller it maps to nothing matches only
	// wildcard ("*") intentions.
	SourceName func(spiffeid.ID) (string, bool)
}

// Intentions enforces the Consul intentions whose destination is one
// service. Create it with Registry.WatchIntentions. Its methods are safe
// for concurrent use.
type Intentions struct {
	cfg    IntentionsConfig
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.RWMutex
	rules  []*api.Intention // sorted by precedence, highest first
	loaded bool
}

// WatchIntentions loads the intentions whose destination is cfg.Service
// (exact or "*") and follows their changes with a blocking query, so a
// change applies to new calls as soon as Consul reports it (well under a
// second). It blocks until the first load or until ctx ends, and fails
// then with the last error. While Consul is unreachable afterwards, the
// last loaded intentions stay in force.
func (r *Registry) WatchIntentions(ctx context.Context, cfg IntentionsConfig) (*Intentions, error) {
	if r.cfg.Consul == nil {
		return nil, fmt.Errorf("%w: WatchIntentions %q", ErrNoConsul, cfg.Service)
	}
	if cfg.Service == "" || cfg.Service == "*" {
		return nil, fmt.Errorf("discovery: IntentionsConfig.Service %q: want the server's own service name", cfg.Service)
	}
	if cfg.SourceName == nil {
		cfg.SourceName = ServiceName
		if td := r.cfg.TrustDomain; !td.IsZero() {
			cfg.SourceName = func(id spiffeid.ID) (string, bool) {
				if !id.MemberOf(td) {
					return "", false
				}
				return ServiceName(id)
			}
		}
	}
	wctx, cancel := context.WithCancel(context.Background())
	in := &Intentions{cfg: cfg, cancel: cancel, done: make(chan struct{})}
	first := make(chan struct{})
	var once sync.Once
	var lastErr error
	var errMu sync.Mutex
	connect := r.cfg.Consul.Connect()
	fetch := func(ctx context.Context, index uint64) (uint64, error) {
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: r.cfg.WaitTime}).WithContext(ctx)
		m, meta, err := connect.IntentionMatch(&api.IntentionMatch{By: api.IntentionMatchDestination, Names: []string{cfg.Service}}, q)
		if err != nil {
			return 0, fmt.Errorf("discovery: consul intentions for %q: %w", cfg.Service, err)
		}
		rules := m[cfg.Service]
		for _, ixn := range rules {
			ixn.Precedence = precedence(ixn)
		}
		// Highest precedence first; Consul's order, recomputed so the
		// decision does not rest on the answer's order.
		slices.SortStableFunc(rules, func(a, b *api.Intention) int { return cmp.Compare(b.Precedence, a.Precedence) })
		in.mu.Lock()
		changed := !in.loaded || !slices.EqualFunc(in.rules, rules, sameIntention)
		in.rules, in.loaded = rules, true
		in.mu.Unlock()
		if changed {
			r.emit(Event{Kind: IntentionsUpdated, Target: cfg.Service, Intentions: len(rules)})
		}
		once.Do(func() { close(first) })
		return meta.LastIndex, nil
	}
	hooks := consulwatch.Hooks{
		OnError: func(err error, attempt int, retryIn time.Duration) {
			errMu.Lock()
			lastErr = err
			errMu.Unlock()
			in.mu.RLock()
			n := len(in.rules)
			in.mu.RUnlock()
			r.emit(Event{Kind: SourceUnreachable, Target: cfg.Service, Intentions: n, Err: err, Attempt: attempt, RetryIn: retryIn})
		},
		OnRecover: func() { r.emit(Event{Kind: SourceRecovered, Target: cfg.Service}) },
	}
	go func() {
		defer close(in.done)
		_ = consulwatch.Run(wctx, r.backoff(), fetch, hooks, nil)
	}()
	select {
	case <-first:
		return in, nil
	case <-ctx.Done():
		_ = in.Close()
		errMu.Lock()
		defer errMu.Unlock()
		if lastErr != nil {
			return nil, fmt.Errorf("discovery: intentions for %q not loaded: %w (last error: %v)", cfg.Service, ctx.Err(), lastErr)
		}
		return nil, fmt.Errorf("discovery: intentions for %q not loaded: %w", cfg.Service, ctx.Err())
	}
}

func sameIntention(a, b *api.Intention) bool {
	return a.SourceName == b.SourceName && a.DestinationName == b.DestinationName &&
		a.Action == b.Action && len(a.Permissions) == len(b.Permissions) && a.ModifyIndex == b.ModifyIndex
}

// precedence is Consul's intention precedence for the default namespace:
// exact source and destination 9, wildcard source 8, wildcard destination
// 6, both wildcard 5.
func precedence(ixn *api.Intention) int {
	p := 9
	if ixn.DestinationName == "*" {
		p = 6
	}
	if ixn.SourceName == "*" {
		p--
	}
	return p
}

// Authorize decides whether caller may call method on the service, by the
// highest-precedence intention whose source matches the caller's service
// name (exact beats "*"), else the default. rule names what decided, for
// the denial message. It does not block.
//
// Intentions with L7 Permissions (HTTP path/method rules) are not
// evaluated: a matching one denies, with a rule that says so, as Consul's
// own L4 check treats them. method is passed for that future use.
//
// The mesh turns it into a security.Authorizer:
//
//	func(ctx context.Context, c security.Call) error {
//		if ok, rule := in.Authorize(ctx, c.Caller, c.Method); !ok {
//			return security.Deny(c, rule)
//		}
//		return nil
//	}
func (in *Intentions) Authorize(_ context.Context, caller spiffeid.ID, method string) (allowed bool, rule string) {
	_ = method
	name, named := in.cfg.SourceName(caller)
	in.mu.RLock()
	defer in.mu.RUnlock()
	for _, ixn := range in.rules {
		if ixn.SourceName != "*" && (!named || ixn.SourceName != name) {
			continue
		}
		desc := fmt.Sprintf("consul intention %s => %s", ixn.SourceName, ixn.DestinationName)
		if len(ixn.Permissions) > 0 {
			return false, desc + " (L7 permissions, not enforced by gridmesh: denied)"
		}
		return ixn.Action == api.IntentionActionAllow, fmt.Sprintf("%s (%s)", desc, ixn.Action)
	}
	if in.cfg.DefaultAllow {
		return true, "consul intentions default allow"
	}
	return false, "consul intentions default deny"
}

// Len is the number of intentions in force.
func (in *Intentions) Len() int {
	in.mu.RLock()
	defer in.mu.RUnlock()
	return len(in.rules)
}

// Close stops watching; the last intentions stay in force for Authorize.
// It is safe to call more than once.
func (in *Intentions) Close() error {
	in.cancel()
	<-in.done
	return nil
}
