package discovery

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/gridmesh/gridmesh/internal/consulwatch"
)

// Endpoint is one instance of a service.
type Endpoint struct {
	// Addr is host:port.
	Addr string
	// ID is the SPIFFE ID the instance must present: its spiffe_id meta,
	// else ServiceID(Config.TrustDomain, service), else for static targets
	// ?spiffe_id. Zero when none of these is known.
	ID spiffeid.ID
	// Tags and Meta are the instance's Consul tags and meta (nil for static).
	Tags []string
	Meta map[string]string
	// Weight is the instance's Consul passing weight (default 1).
	Weight int
}

func endpointsEqual(a, b []Endpoint) bool {
	return slices.EqualFunc(a, b, func(x, y Endpoint) bool {
		return x.Addr == y.Addr && x.ID == y.ID && x.Weight == y.Weight &&
			slices.Equal(x.Tags, y.Tags) && maps.Equal(x.Meta, y.Meta)
	})
}

// Watch follows the endpoints of one target. Create it with Registry.Watch.
// Its methods are safe for concurrent use.
type Watch struct {
	target string
	cancel context.CancelFunc
	done   chan struct{}
	poke   chan struct{}

	next atomic.Uint64 // round-robin position for Next

	mu    sync.Mutex
	eps   []Endpoint
	err   error // last failure, until a set is known
	have  bool
	ready chan struct{} // closed once the first set is known
}

// Watch starts following target (consul:/// or static:///, see
// ParseTarget) and calls update, if not nil, with every new endpoint set,
// sorted by Addr: from the watch's goroutine, one call at a time, never
// after Close returns. While Consul cannot be reached the watch keeps its
// last set and retries with backoff (reported as SourceUnreachable events);
// only a failure before any set was known reaches update, as (nil, err).
// An empty set means Consul answered that no instance passes its checks.
//
// Watch does not block; Wait blocks for the first set.
func (r *Registry) Watch(target string, update func([]Endpoint, error)) (*Watch, error) {
	t, err := ParseTarget(target)
	if err != nil {
		return nil, err
	}
	return r.watch(t, update)
}

func (r *Registry) watch(t Target, update func([]Endpoint, error)) (*Watch, error) {
	if t.Scheme == "consul" && r.cfg.Consul == nil {
		return nil, fmt.Errorf("%w: target %s", ErrNoConsul, t)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &Watch{
		target: t.String(),
		cancel: cancel,
		done:   make(chan struct{}),
		poke:   make(chan struct{}, 1),
		ready:  make(chan struct{}),
	}
	if update == nil {
		update = func([]Endpoint, error) {}
	}
	go func() {
		defer close(w.done)
		switch t.Scheme {
		case "static":
			eps := make([]Endpoint, 0, len(t.Addrs))
			for _, a := range t.Addrs {
				eps = append(eps, Endpoint{Addr: a, ID: t.ID, Weight: 1})
			}
			slices.SortFunc(eps, func(a, b Endpoint) int { return cmp.Compare(a.Addr, b.Addr) })
			w.set(eps, nil)
			r.emit(Event{Kind: EndpointsUpdated, Target: w.target, Endpoints: len(eps)})
			update(eps, nil)
		case "consul":
			r.runConsul(ctx, t, w, update)
		}
	}()
	return w, nil
}

func (r *Registry) runConsul(ctx context.Context, t Target, w *Watch, update func([]Endpoint, error)) {
	health := r.cfg.Consul.Health()
	fetch := func(ctx context.Context, index uint64) (uint64, error) {
		ctx, cancel := context.WithTimeout(ctx, consulwatch.QueryTimeout(r.cfg.WaitTime))
		defer cancel()
		q := (&api.QueryOptions{Datacenter: t.Datacenter, WaitIndex: index, WaitTime: r.cfg.WaitTime}).WithContext(ctx)
		entries, meta, err := health.ServiceMultipleTags(t.Service, t.Tags, true, q)
		if err != nil {
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return 0, fmt.Errorf("discovery: consul health query for %s: no answer within %v: %w", t, consulwatch.QueryTimeout(r.cfg.WaitTime), err)
			}
			return 0, fmt.Errorf("discovery: consul health query for %s: %w", t, err)
		}
		eps := r.endpoints(t, w.target, entries)
		w.mu.Lock()
		changed := !w.have || !endpointsEqual(w.eps, eps)
		w.mu.Unlock()
		if changed {
			w.set(eps, nil)
			r.emit(Event{Kind: EndpointsUpdated, Target: w.target, Endpoints: len(eps)})
			update(eps, nil)
		}
		return meta.LastIndex, nil
	}
	hooks := consulwatch.Hooks{
		OnError: func(err error, attempt int, retryIn time.Duration) {
			w.mu.Lock()
			have, n := w.have, len(w.eps)
			w.mu.Unlock()
			r.emit(Event{Kind: SourceUnreachable, Target: w.target, Endpoints: n, Err: err, Attempt: attempt, RetryIn: retryIn})
			if !have {
				w.set(nil, err)
				update(nil, err)
			}
		},
		OnRecover: func() { r.emit(Event{Kind: SourceRecovered, Target: w.target, Endpoints: len(w.Endpoints())}) },
	}
	_ = consulwatch.Run(ctx, r.backoff(), fetch, hooks, w.poke)
}

// endpoints turns Consul's answer into a sorted endpoint set, leaving out
// (and reporting) entries it cannot use.
func (r *Registry) endpoints(t Target, target string, entries []*api.ServiceEntry) []Endpoint {
	eps := make([]Endpoint, 0, len(entries))
	seen := map[string]bool{}
	for _, e := range entries {
		if e.Service == nil {
			continue
		}
		host := e.Service.Address
		if host == "" && e.Node != nil {
			host = e.Node.Address // Consul's rule: an empty service address means the node's
		}
		if host == "" || e.Service.Port <= 0 {
			r.emit(Event{Kind: EndpointRejected, Target: target, Err: fmt.Errorf("discovery: instance %q has no usable address (%q port %d)", e.Service.ID, host, e.Service.Port)})
			continue
		}
		ep := Endpoint{
			Addr:   net.JoinHostPort(host, strconv.Itoa(e.Service.Port)),
			Tags:   e.Service.Tags,
			Meta:   e.Service.Meta,
			Weight: max(e.Service.Weights.Passing, 1),
		}
		switch s, ok := e.Service.Meta[MetaSPIFFEID]; {
		case ok:
			id, err := spiffeid.FromString(s)
			if err != nil {
				// Fail closed: an instance whose identity cannot be known is not dialled.
				r.emit(Event{Kind: EndpointRejected, Target: target, Err: fmt.Errorf("discovery: instance %q meta %s=%q: %w", e.Service.ID, MetaSPIFFEID, s, err)})
				continue
			}
			ep.ID = id
		case !r.cfg.TrustDomain.IsZero():
			id, err := ServiceID(r.cfg.TrustDomain, t.Service)
			if err != nil {
				r.emit(Event{Kind: EndpointRejected, Target: target, Err: err})
				continue
			}
			ep.ID = id
		}
		if seen[ep.Addr] {
			continue
		}
		seen[ep.Addr] = true
		eps = append(eps, ep)
	}
	slices.SortFunc(eps, func(a, b Endpoint) int { return cmp.Compare(a.Addr, b.Addr) })
	return eps
}

func (w *Watch) set(eps []Endpoint, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.err = err
	if err != nil {
		return
	}
	w.eps = eps
	if !w.have {
		w.have = true
		close(w.ready)
	}
}

// Target is the watched target in canonical form.
func (w *Watch) Target() string { return w.target }

// Endpoints returns the last known endpoint set (nil before the first). It
// does not block. The slice must not be modified.
func (w *Watch) Endpoints() []Endpoint {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.eps
}

// Wait blocks until the watch knows an endpoint set and returns it, or
// until ctx ends; then the error includes the last Consul failure, if any.
func (w *Watch) Wait(ctx context.Context) ([]Endpoint, error) {
	select {
	case <-w.ready:
		return w.Endpoints(), nil
	case <-ctx.Done():
		w.mu.Lock()
		err := w.err
		w.mu.Unlock()
		if err != nil {
			return nil, fmt.Errorf("discovery: %s: no endpoints yet: %w (last error: %v)", w.target, ctx.Err(), err)
		}
		return nil, fmt.Errorf("discovery: %s: no endpoints yet: %w", w.target, ctx.Err())
	}
}

// Next returns the endpoints of the current set in turn (round robin), for
// clients outside gRPC such as an HTTP transport. It reports false while
// the set is unknown or empty. It does not block.
func (w *Watch) Next() (Endpoint, bool) {
	eps := w.Endpoints()
	if len(eps) == 0 {
		return Endpoint{}, false
	}
	return eps[(w.next.Add(1)-1)%uint64(len(eps))], true
}

// ResolveNow cuts a retry wait short. It does not block.
func (w *Watch) ResolveNow() {
	select {
	case w.poke <- struct{}{}:
	default:
	}
}

// Close stops the watch and waits for its goroutine. It is safe to call
// more than once.
func (w *Watch) Close() error {
	w.cancel()
	<-w.done
	return nil
}
