package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/gridmesh/gridmesh/internal/consulwatch"
)

// Config says where services are found. Its zero value serves static:///
// targets only.
type Config struct {
	// Consul is the client for consul:/// targets, Register and
	// WatchIntentions. Nil refuses those with ErrNoConsul. Build it with
	// api.NewClient; its HTTP client must not time out faster than
	// WaitTime, which api.NewClient's default does not.
	Consul *api.Client

	// TrustDomain derives the SPIFFE ID an instance must present when its
	// Consul entry has no spiffe_id meta (see ServiceID), and the ID that
	// Register advertises when Service.SPIFFEID is zero. Zero: such
	// instances carry no expected ID and the mesh's credentials fall back to
	// their default check.
	TrustDomain spiffeid.TrustDomain

	// WaitTime is how long one blocking query may wait in Consul for a
	// change. Default 5 minutes, Consul's own default.
	WaitTime time.Duration

	// RetryMin and RetryMax bound the backoff between attempts while Consul
	// cannot be reached. Defaults 100ms and 500ms, so a restarted agent's
	// news (a new registration) is seen within about half a second of its
	// return.
	RetryMin, RetryMax time.Duration
}

// ErrNoConsul says a Consul feature was used on a Registry without
// Config.Consul.
var ErrNoConsul = errors.New("discovery: no Consul client configured (set Config.Consul)")

// Registry finds service endpoints, registers services and watches
// intentions. It starts no goroutines of its own: every watch it starts
// has its own Close. It is safe for concurrent use.
type Registry struct {
	cfg     Config
	logger  *slog.Logger
	onEvent func(Event)
}

// New returns a Registry. It does not block or contact Consul.
func New(cfg Config, opts ...Option) (*Registry, error) {
	if cfg.WaitTime < 0 || cfg.RetryMin < 0 || cfg.RetryMax < 0 {
		return nil, fmt.Errorf("discovery: WaitTime, RetryMin and RetryMax must not be negative (got %v, %v, %v)", cfg.WaitTime, cfg.RetryMin, cfg.RetryMax)
	}
	if cfg.RetryMin > 0 && cfg.RetryMax > 0 && cfg.RetryMax < cfg.RetryMin {
		return nil, fmt.Errorf("discovery: RetryMax %v is less than RetryMin %v", cfg.RetryMax, cfg.RetryMin)
	}
	if cfg.WaitTime == 0 {
		cfg.WaitTime = 5 * time.Minute
	}
	r := &Registry{cfg: cfg}
	for _, o := range opts {
		o.apply(r)
	}
	if r.logger != nil {
		r.logger = r.logger.With("component", "discovery")
	}
	return r, nil
}

func (r *Registry) backoff() consulwatch.Backoff {
	return consulwatch.Backoff{Min: r.cfg.RetryMin, Max: r.cfg.RetryMax}
}

// Option configures a Registry.
type Option interface{ apply(*Registry) }

type optionFunc func(*Registry)

func (f optionFunc) apply(r *Registry) { f(r) }

// WithLogger makes the Registry log its events to l (component=discovery).
// Without it the Registry is silent.
func WithLogger(l *slog.Logger) Option { return optionFunc(func(r *Registry) { r.logger = l }) }

// WithEvents calls fn with every Event, for metrics. fn runs on the
// goroutine of the watch that produced the event and must not block.
func WithEvents(fn func(Event)) Option { return optionFunc(func(r *Registry) { r.onEvent = fn }) }

// EventKind says what happened.
type EventKind int

const (
	// EndpointsUpdated: a watch delivered a new endpoint set (Endpoints).
	EndpointsUpdated EventKind = iota + 1
	// SourceUnreachable: a Consul query failed (Err); the watch keeps its
	// last known state (Endpoints instances, or intentions) and retries in
	// RetryIn.
	SourceUnreachable
	// SourceRecovered: a query succeeded after failures.
	SourceRecovered
	// EndpointRejected: a Consul instance was left out of the endpoint set
	// because its entry is unusable (Err says why).
	EndpointRejected
	// Registered: Register put the instance in Consul (Target is its ID).
	Registered
	// HeartbeatFailed: a TTL heartbeat failed (Err); it is retried, and the
	// instance re-registered if Consul lost it.
	HeartbeatFailed
	// Draining: the instance marked itself failing.
	Draining
	// Deregistered: the instance left Consul (Err if that failed).
	Deregistered
	// IntentionsUpdated: an intention watch loaded a new set (Intentions).
	IntentionsUpdated
)

var kindNames = map[EventKind]string{
	EndpointsUpdated: "endpoints updated", SourceUnreachable: "consul unreachable",
	SourceRecovered: "consul reachable again", EndpointRejected: "endpoint rejected",
	Registered: "registered", HeartbeatFailed: "heartbeat failed", Draining: "draining",
	Deregistered: "deregistered", IntentionsUpdated: "intentions updated",
}

func (k EventKind) String() string {
	if s, ok := kindNames[k]; ok {
		return s
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event reports a state change, for logs and metrics.
type Event struct {
	Kind EventKind
	// Target is the watched target ("consul:///trading?tag=v2"), the
	// registered instance ID, or the service whose intentions are watched.
	Target string
	// Endpoints is the size of the endpoint set in force after the event.
	Endpoints int
	// Intentions is the number of intentions in force after the event.
	Intentions int
	// Err is the failure, for SourceUnreachable, EndpointRejected,
	// HeartbeatFailed and Deregistered.
	Err error
	// Attempt counts consecutive failures, for SourceUnreachable.
	Attempt int
	// RetryIn is the wait before the next attempt, for SourceUnreachable.
	RetryIn time.Duration
}

func (r *Registry) emit(e Event) {
	if r.onEvent != nil {
		r.onEvent(e)
	}
	if r.logger == nil {
		return
	}
	attrs := []any{"target", e.Target}
	level := slog.LevelDebug
	switch e.Kind {
	case EndpointsUpdated:
		attrs = append(attrs, "endpoints", e.Endpoints)
		level = slog.LevelInfo
	case SourceUnreachable:
		attrs = append(attrs, "error", e.Err, "attempt", e.Attempt, "retry_in", e.RetryIn, "endpoints_kept", e.Endpoints)
		level = slog.LevelWarn
	case EndpointRejected, HeartbeatFailed:
		attrs = append(attrs, "error", e.Err)
		level = slog.LevelWarn
	case Deregistered:
		if e.Err != nil {
			attrs = append(attrs, "error", e.Err)
			level = slog.LevelWarn
		} else {
			level = slog.LevelInfo
		}
	case IntentionsUpdated:
		attrs = append(attrs, "intentions", e.Intentions)
		level = slog.LevelInfo
	default:
		level = slog.LevelInfo
	}
	r.logger.Log(context.Background(), level, e.Kind.String(), attrs...)
}
