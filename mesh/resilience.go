package mesh

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"

	"google.golang.org/grpc"

	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/resilience"
	"github.com/gridmesh/gridmesh/resilience/idempotency"
)

// resilienceDialConfig is the resilience part of dialConfig.
type resilienceDialConfig struct {
	client *resilience.Client
	config *resilience.Config // WithResiliencePolicy
	off    bool
	// keepGRPCRetries leaves grpc-go's retries on: xds:/// targets, whose
	// retry policy comes from the control plane's routes.
	keepGRPCRetries bool
}

// WithResilience applies rc's retries, budget, breaker, timeouts, bulkhead,
// rate limit and hedging to the connection's calls. Share one rc between
// connections to share breakers and budgets per destination. Default: each
// Dial gets its own client with resilience.DefaultConfig(), which retries
// only what is safe to repeat (see the resilience package).
func WithResilience(rc *resilience.Client) DialOption {
	return dialOption(func(c *dialConfig) { c.resilience = resilienceDialConfig{client: rc} })
}

// WithResiliencePolicy applies cfg instead of resilience.DefaultConfig(),
// with the mesh's own telemetry: retries, hedges, breaker changes and budget
// exhaustion show in metrics and on the admin endpoint. An invalid cfg makes
// Dial fail with the field at fault. Use WithResilience instead to share
// breakers and budgets between connections.
func WithResiliencePolicy(cfg resilience.Config) DialOption {
	return dialOption(func(c *dialConfig) { c.resilience = resilienceDialConfig{config: &cfg} })
}

// WithoutResilience turns the resilience policies off: no retries, no
// breaker. grpc-go's own retries stay off too.
func WithoutResilience() DialOption {
	return dialOption(func(c *dialConfig) { c.resilience = resilienceDialConfig{off: true} })
}

// WithIdempotency makes the server answer a repeated request that carries
// an idempotency key with the stored result of the first, instead of
// running the handler again; keys are scoped by caller SPIFFE ID. store
// keeps the results: idempotency.NewMemoryStore for one process, a
// database-backed Store when results must survive restarts.
func WithIdempotency(store idempotency.Store) ServerOption {
	return serverOption(func(c *serverConfig) { c.idempotency = store })
}

// resilienceClient returns the client Dial applies, or nil when off. The
// default client reports to tel; a client given with WithResilience keeps
// the observer it was built with.
func (c *dialConfig) resilienceClient(tel *meshTelemetry) (*resilience.Client, error) {
	if c.resilience.off {
		return nil, nil
	}
	if c.resilience.client != nil {
		return c.resilience.client, nil
	}
	cfg, what := resilience.DefaultConfig(), "default resilience policy"
	if c.resilience.config != nil {
		cfg, what = *c.resilience.config, "WithResiliencePolicy"
	}
	rc, err := c.newResilienceClient(tel, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return rc, nil
}

// newResilienceClient returns a client for cfg that reports to tel.
func (c *dialConfig) newResilienceClient(tel *meshTelemetry, cfg resilience.Config) (*resilience.Client, error) {
	opts := []resilience.Option{resilience.WithObserver(tel.resilienceObserver())}
	if c.logger != nil {
		opts = append(opts, resilience.WithLogger(c.logger))
	}
	return resilience.NewClient(cfg, opts...)
}

// resilienceDialOptions returns the client interceptors. grpc-go's own
// retries are disabled: they would retry writes regardless of idempotency
// and stack on top of ours.
func (c *dialConfig) resilienceDialOptions(tel *meshTelemetry, target string, reg *discovery.Registry) ([]grpc.DialOption, error) {
	rc, err := c.resilienceClient(tel)
	if err != nil || (rc == nil && c.resilience.keepGRPCRetries) {
		return nil, err
	}
	if rc == nil {
		return []grpc.DialOption{grpc.WithDisableRetry()}, nil
	}
	if strings.HasPrefix(target, "consul:") && c.resilience.client == nil && c.resilience.config == nil {
		stop, err := followConsulPolicy(reg, target, rc, c.logger)
		if err != nil {
			return nil, err
		}
		tel.addCloser(stop)
	}
	tel.attachResilience(rc, target)
	return []grpc.DialOption{
		grpc.WithDisableRetry(),
		grpc.WithChainUnaryInterceptor(rc.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(rc.StreamClientInterceptor()),
	}, nil
}

// idempotencyInterceptor returns the server interceptor for keyed requests,
// or nil without WithIdempotency.
func (c *serverConfig) idempotencyInterceptor() grpc.UnaryServerInterceptor {
	if c.idempotency == nil {
		return nil
	}
	return idempotency.NewServer(c.idempotency, callerKey).UnaryServerInterceptor()
}

func callerKey(ctx context.Context) string {
	id, _ := PeerID(ctx)
	return id.String()
}

// unaryAfterAuthz lists the unary interceptors that run once a call is
// authorized.
func (c *serverConfig) unaryAfterAuthz() []grpc.UnaryServerInterceptor {
	var out []grpc.UnaryServerInterceptor
	if i := c.idempotencyInterceptor(); i != nil {
		out = append(out, i)
	}
	return out
}

// followConsulPolicy keeps the policy of rc, which serves one consul:///
// target (a Dial, or one service of an HTTPClient), in step with
// the "resilience-*" meta of the service's instances, applied over the
// default policy (resilience.FromConsulMeta): ops set
// resilience-retry-max-attempts=2 on the service and every client follows.
// Meta that does not parse, or that the instances disagree on, keeps the
// policy in force and is logged. Code (WithResilience,
// WithResiliencePolicy) takes precedence: the mesh follows Consul only
// over its default policy. stop ends the watch.
func followConsulPolicy(reg *discovery.Registry, target string, rc *resilience.Client, logger *slog.Logger) (stop func(), err error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "mesh.resilience", "target", target)
	base := resilience.DefaultConfig()
	last := fmt.Sprint(map[string]string{}) // the resilience meta in force; none at first
	w, err := reg.Watch(target, func(eps []discovery.Endpoint, err error) {
		if err != nil || len(eps) == 0 {
			return // keep what is in force while no instance says otherwise
		}
		meta, err := agreedResilienceMeta(eps)
		if err != nil {
			logger.Warn("Consul resilience meta ignored; the policy in force stays", "error", err)
			return
		}
		key := fmt.Sprint(meta)
		if key == last {
			return
		}
		cfg := base
		if len(meta) > 0 {
			p, err := resilience.FromConsulMeta(base.Default, meta)
			if err != nil {
				logger.Warn("Consul resilience meta refused; the policy in force stays", "error", err)
				return
			}
			// rc serves this target alone: the policy is its default too,
			// for HTTP, whose destinations are URL hosts.
			cfg = resilience.Config{Source: resilience.SourceConsul, Default: p, Targets: map[string]resilience.Policy{target: p}}
		}
		if err := rc.Update(cfg); err != nil {
			logger.Warn("Consul resilience meta refused; the policy in force stays", "error", err)
			return
		}
		last = key
		logger.Info("resilience policy from Consul meta applied", "meta", meta)
	})
	if err != nil {
		return nil, err
	}
	return func() { w.Close() }, nil
}

// agreedResilienceMeta returns the "resilience-*" meta the instances share,
// or an error naming a key they disagree on. An instance without resilience
// meta disagrees with one that has it.
func agreedResilienceMeta(eps []discovery.Endpoint) (map[string]string, error) {
	pick := func(m map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range m {
			if strings.HasPrefix(k, resilience.MetaPrefix) {
				out[k] = v
			}
		}
		return out
	}
	first := pick(eps[0].Meta)
	for _, e := range eps[1:] {
		other := pick(e.Meta)
		keys := append(slices.Sorted(maps.Keys(first)), slices.Sorted(maps.Keys(other))...)
		for _, k := range keys {
			if v, ok := other[k]; !ok || v != first[k] {
				return nil, fmt.Errorf("instances %s and %s disagree on %s (%q, %q): set the same resilience meta on every instance",
					eps[0].Addr, e.Addr, k, first[k], other[k])
			}
		}
	}
	return first, nil
}
