package discovery

import (
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"

	"github.com/gridmesh/gridmesh/internal/endpointid"
)

// ResolverBuilders returns the gRPC resolver builders for consul:/// and
// static:/// targets, for grpc.WithResolvers (they are not registered
// globally). Every address they produce carries its expected SPIFFE ID
// (internal/endpointid) when one is known. dns:/// and xds:/// stay
// grpc-go's.
func (r *Registry) ResolverBuilders() []resolver.Builder {
	return []resolver.Builder{&builder{r: r, scheme: "consul"}, &builder{r: r, scheme: "static"}}
}

type builder struct {
	r      *Registry
	scheme string
}

func (b *builder) Scheme() string { return b.scheme }

// Build parses the target and starts a Watch. It does not block.
func (b *builder) Build(target resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	u := target.URL
	t, err := parseURL(u.String(), &u)
	if err != nil {
		return nil, err
	}
	res := &grpcResolver{cc: cc}
	w, err := b.r.watch(t, res.update)
	if err != nil {
		return nil, err
	}
	res.w = w
	return res, nil
}

type grpcResolver struct {
	cc resolver.ClientConn
	w  *Watch

	mu     sync.Mutex
	closed bool
}

func (g *grpcResolver) update(eps []Endpoint, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return
	}
	if err != nil {
		// Only before the first endpoint set: afterwards the watch keeps the
		// last set and never reports an error, so calls keep flowing.
		g.cc.ReportError(err)
		return
	}
	state := resolver.State{
		Addresses: make([]resolver.Address, 0, len(eps)),
		Endpoints: make([]resolver.Endpoint, 0, len(eps)),
	}
	for _, ep := range eps {
		addr := resolver.Address{Addr: ep.Addr}
		if !ep.ID.IsZero() {
			addr = endpointid.Set(addr, ep.ID)
		}
		state.Addresses = append(state.Addresses, addr)
		state.Endpoints = append(state.Endpoints, resolver.Endpoint{Addresses: []resolver.Address{addr}})
	}
	// An error here comes from the balancer rejecting the state (for
	// example, no addresses for a policy that needs some); the next change
	// from Consul supersedes it, so there is nothing to retry.
	_ = g.cc.UpdateState(state)
}

// ResolveNow cuts a retry wait short.
func (g *grpcResolver) ResolveNow(resolver.ResolveNowOptions) { g.w.ResolveNow() }

// Close stops the watch. gRPC calls it once.
func (g *grpcResolver) Close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	_ = g.w.Close()
}

// DialOptions returns the grpc.DialOptions that make a client resolve
// consul:/// and static:/// targets through r and balance with b: the
// resolvers and b's default service config. It fails if b is invalid.
func (r *Registry) DialOptions(b Balancer) ([]grpc.DialOption, error) {
	sc, err := b.ServiceConfig()
	if err != nil {
		return nil, err
	}
	return []grpc.DialOption{grpc.WithResolvers(r.ResolverBuilders()...), grpc.WithDefaultServiceConfig(sc)}, nil
}
