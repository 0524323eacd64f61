package mesh

import (
	"context"
	"fmt"

	"google.golang.org/grpc"

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
	opts := []resilience.Option{resilience.WithObserver(tel.resilienceObserver())}
	if c.logger != nil {
		opts = append(opts, resilience.WithLogger(c.logger))
	}
	cfg, what := resilience.DefaultConfig(), "default resilience policy"
	if c.resilience.config != nil {
		cfg, what = *c.resilience.config, "WithResiliencePolicy"
	}
	rc, err := resilience.NewClient(cfg, opts...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return rc, nil
}

// resilienceDialOptions returns the client interceptors. grpc-go's own
// retries are disabled: they would retry writes regardless of idempotency
// and stack on top of ours.
func (c *dialConfig) resilienceDialOptions(tel *meshTelemetry, target string) ([]grpc.DialOption, error) {
	rc, err := c.resilienceClient(tel)
	if err != nil || (rc == nil && c.resilience.keepGRPCRetries) {
		return nil, err
	}
	if rc == nil {
		return []grpc.DialOption{grpc.WithDisableRetry()}, nil
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
