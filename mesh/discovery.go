package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/internal/admin"
	"github.com/gridmesh/gridmesh/security"
)

// discoveryDialConfig is the discovery part of dialConfig.
type discoveryDialConfig struct {
	registry *discovery.Registry
	balancer *discovery.Balancer
}

// discoveryServerConfig is the discovery part of serverConfig.
type discoveryServerConfig struct {
	registry *discovery.Registry
	service  discovery.Service
}

// WithRegistry sets the discovery Registry through which Dial and
// HTTPClient find the endpoints of consul:/// and static:/// targets.
// Default: a Registry without Consul, which serves static:/// targets only.
// The mesh does not close it (a Registry starts nothing of its own).
//
// For a consul:/// target Dial also follows the service's "resilience-*"
// meta (resilience.FromConsulMeta, e.g. resilience-retry-max-attempts=2)
// over its default policy, when neither WithResilience nor
// WithResiliencePolicy is given; meta that does not parse, or that the
// instances disagree on, keeps the policy in force and is logged.
func WithRegistry(reg *discovery.Registry) DialOption {
	return dialOption(func(c *dialConfig) { c.discovery.registry = reg })
}

// WithBalancer sets how Dial spreads calls over a target's endpoints:
// round_robin (the default), least_request, ring_hash on a metadata key,
// weighted_round_robin, pick_first, each optionally with outlier detection.
// See discovery.Balancer. An invalid balancer makes Dial fail with the field
// at fault.
func WithBalancer(b discovery.Balancer) DialOption {
	return dialOption(func(c *dialConfig) { c.discovery.balancer = &b })
}

// WithRegistration makes Serve (of NewServer or NewHTTPServer) register the server in Consul through reg
// once it listens (Address and Port default to the listener's, SPIFFEID to
// the server's own), keep its check passing while serving, mark it failing
// as soon as draining starts, and deregister it when Serve returns.
func WithRegistration(reg *discovery.Registry, svc discovery.Service) ServerOption {
	return serverOption(func(c *serverConfig) {
		c.discovery.registry = reg
		c.discovery.service = svc
	})
}

// IntentionsAuthorizer turns Consul intentions watched with
// discovery.Registry.WatchIntentions into a server authorizer, for
// WithAuthorizer, for gRPC and HTTP servers alike. L7 permissions apply to
// HTTP requests by method, normalized path and headers, and to gRPC calls
// as Consul sees them (a POST to "/pkg.Service/Method", headers from the
// call's metadata). A denial names the intention (or the default) that
// decided.
func IntentionsAuthorizer(in *discovery.Intentions) security.Authorizer {
	return func(ctx context.Context, c security.Call) error {
		req := discovery.IntentionRequest{Caller: c.Caller, Method: c.Method, Path: c.Path, Header: c.Header}
		if ok, rule := in.AuthorizeRequest(ctx, req); !ok {
			return security.Deny(c, rule)
		}
		return nil
	}
}

// discoveryDialOptions returns the resolvers for consul:/// and static:///
// targets and the balancer's service config. Without WithRegistry, static
// targets still work.
func (c *dialConfig) discoveryDialOptions(target string) (*discovery.Registry, []grpc.DialOption, error) {
	reg := c.discovery.registry
	if reg == nil && strings.HasPrefix(target, "consul:") {
		return nil, nil, errors.New("consul:/// targets need a Consul client: pass mesh.WithRegistry(reg), with reg from discovery.New(discovery.Config{Consul: client})")
	}
	if reg == nil {
		var err error
		if reg, err = discovery.New(discovery.Config{}); err != nil {
			return nil, nil, err
		}
	}
	b := discovery.Balancer{}
	if c.discovery.balancer != nil {
		b = *c.discovery.balancer
	}
	opts, err := reg.DialOptions(b)
	return reg, opts, err
}

// register puts a server (gRPC or HTTP) listening on lis in Consul when
// WithRegistration was given; id is the server's own SPIFFE ID.
func (c discoveryServerConfig) register(ctx context.Context, lis net.Listener, id spiffeid.ID) (*discovery.Registration, error) {
	if c.registry == nil {
		return nil, nil
	}
	svc := c.service
	if svc.Address == "" || svc.Port == 0 {
		host, port, err := net.SplitHostPort(lis.Addr().String())
		if err != nil {
			return nil, fmt.Errorf("mesh: registering %s: %w", svc.Name, err)
		}
		if svc.Address == "" {
			svc.Address = host
		}
		if svc.Port == 0 {
			svc.Port, _ = strconv.Atoi(port)
		}
	}
	if svc.SPIFFEID.IsZero() {
		svc.SPIFFEID = id
	}
	reg, err := c.registry.Register(ctx, svc)
	if err != nil {
		return nil, fmt.Errorf("mesh: registering %s in Consul: %w", svc.Name, err)
	}
	return reg, nil
}

// attachDiscovery shows target's balancer and endpoints on the admin
// endpoint and counts its endpoint updates, when telemetry is on. It follows
// the target with its own watch, so what the admin endpoint shows is what
// discovery currently says, not only where calls went.
func (t *meshTelemetry) attachDiscovery(reg *discovery.Registry, target string, b *discovery.Balancer) {
	if t == nil || !t.recording() {
		return
	}
	policy := string(discovery.RoundRobin)
	if b != nil && b.Policy != "" {
		policy = string(b.Policy)
	}
	if b != nil && b.Outlier != nil {
		policy += " with outlier_detection"
	}
	t.balancer = func() string { return policy }
	if reg == nil {
		return
	}
	if _, err := discovery.ParseTarget(target); err != nil {
		return // not a discovery target (dns:///, xds:///, a bare address)
	}
	m := t.rec
	w, err := reg.Watch(target, func(eps []discovery.Endpoint, err error) { m.DiscoveryUpdate(target, len(eps), err) })
	if err != nil {
		return
	}
	t.endpoints = func() []admin.Endpoint {
		var out []admin.Endpoint
		for _, e := range w.Endpoints() {
			ep := admin.Endpoint{Address: e.Addr, Weight: uint32(e.Weight)}
			if !e.ID.IsZero() {
				ep.Identity = e.ID.String()
			}
			out = append(out, ep)
		}
		return out
	}
	t.mu.Lock()
	t.closers = append(t.closers, func() { w.Close() })
	t.mu.Unlock()
}
