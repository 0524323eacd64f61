package controlplane

import (
	"context"
	"fmt"
	"math"
	"net"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/gridmesh/gridmesh/controlplane/registration"
	"github.com/gridmesh/gridmesh/internal/consulwatch"
)

// ConsulSource feeds endpoints from the Consul catalog into a Server: every
// service in the catalog with passing health checks, through consul/api
// blocking queries. A Consul instance's ServiceMeta "version" puts it in a
// version, "spiffe_id" sets its identity and "listen_address" the address
// its server listens on; its weight is its passing weight (Consul's
// default, 1, when unset); its address is the service address, or the
// node's when the service has none. Instances of one service at one
// address (the same registration held by two agents) count once: the one
// Consul changed last.
//
// Registrations that the registration API keeps in Consul
// (WithConsulRegistrations) are such instances; the source also hands
// them to the server's GET /v1/endpoints and Stats.Registered.
type ConsulSource struct {
	client *api.Client
	server *Server
	// Backoff bounds retries while Consul is unreachable; endpoints already
	// known stay in force meanwhile.
	backoff consulwatch.Backoff

	mu       sync.Mutex
	services map[string][]Endpoint
	regs     map[string][]registration.Registration // instances written by the registration API
}

// NewConsulSource returns a source that reads the Consul agent behind
// client and feeds s. Start it with Run.
func NewConsulSource(client *api.Client, s *Server) *ConsulSource {
	return &ConsulSource{client: client, server: s, services: map[string][]Endpoint{}, regs: map[string][]registration.Registration{}}
}

const consulSource = "consul"

// Run watches the catalog until ctx ends. It blocks and returns ctx.Err().
// While Consul is unreachable the last endpoints stay in force.
func (c *ConsulSource) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watching := map[string]context.CancelFunc{}
	log := c.server.log.With("source", consulSource)
	fetch := func(ctx context.Context, index uint64) (uint64, error) {
		names, meta, err := c.client.Catalog().Services((&api.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Minute}).WithContext(ctx))
		if err != nil {
			return 0, fmt.Errorf("controlplane: consul catalog: %w", err)
		}
		for name := range names {
			if _, ok := watching[name]; ok || name == "consul" {
				continue
			}
			sctx, scancel := context.WithCancel(ctx)
			watching[name] = scancel
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = consulwatch.Run(sctx, c.backoff, c.serviceFetch(name), consulwatch.Hooks{
					OnError: func(err error, attempt int, retryIn time.Duration) {
						log.Warn("consul health query failed; keeping last endpoints", "service", name, "err", err, "attempt", attempt, "retry_in", retryIn)
					},
				}, nil)
			}()
		}
		for name, stop := range watching {
			if _, ok := names[name]; !ok {
				stop()
				delete(watching, name)
				c.set(name, nil, nil)
			}
		}
		return meta.LastIndex, nil
	}
	return consulwatch.Run(ctx, c.backoff, fetch, consulwatch.Hooks{
		OnError: func(err error, attempt int, retryIn time.Duration) {
			log.Warn("consul catalog query failed; keeping last endpoints", "err", err, "attempt", attempt, "retry_in", retryIn)
		},
	}, nil)
}

func (c *ConsulSource) serviceFetch(name string) consulwatch.Fetch {
	return func(ctx context.Context, index uint64) (uint64, error) {
		entries, meta, err := c.client.Health().Service(name, "", true, (&api.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Minute}).WithContext(ctx))
		if err != nil {
			return 0, fmt.Errorf("controlplane: consul health of %q: %w", name, err)
		}
		// One instance per address, the one changed last: the same
		// registration may be held by two agents for a while.
		sort.Slice(entries, func(i, j int) bool {
			a, b := entries[i].Service, entries[j].Service
			if a == nil || b == nil {
				return b == nil && a != nil
			}
			if a.ModifyIndex != b.ModifyIndex {
				return a.ModifyIndex > b.ModifyIndex
			}
			return a.ID < b.ID
		})
		var eps []Endpoint
		var regs []registration.Registration
		seen := map[string]bool{}
		for _, e := range entries {
			if e.Service == nil {
				continue
			}
			host := e.Service.Address
			if host == "" && e.Node != nil {
				host = e.Node.Address
			}
			sm := e.Service.Meta
			ep := Endpoint{
				Service:       name,
				Address:       net.JoinHostPort(host, strconv.Itoa(e.Service.Port)),
				Version:       sm[metaVersion],
				SPIFFEID:      sm[metaSPIFFEID],
				ListenAddress: sm[metaListenAddress],
			}
			if w := e.Service.Weights.Passing; w > 1 && w <= math.MaxUint32 {
				ep.Weight = uint32(w)
			}
			if seen[ep.Address] {
				continue
			}
			if err := checkEndpoint(ep); err != nil {
				c.server.log.Warn("skipping consul instance", "service", name, "id", e.Service.ID, "err", err)
				continue
			}
			seen[ep.Address] = true
			eps = append(eps, ep)
			if sm[metaRegisteredBy] == registeredBy {
				ttl, _ := time.ParseDuration(sm[metaTTL])
				regs = append(regs, registrationOf(ep, ttl))
			}
		}
		sort.Slice(eps, func(i, j int) bool { return eps[i].Address < eps[j].Address })
		c.set(name, eps, regs)
		return meta.LastIndex, nil
	}
}

func (c *ConsulSource) set(name string, eps []Endpoint, regs []registration.Registration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(eps) == 0 {
		delete(c.services, name)
	} else {
		c.services[name] = eps
	}
	if len(regs) == 0 {
		delete(c.regs, name)
	} else {
		c.regs[name] = regs
	}
	var allRegs []registration.Registration
	for _, r := range c.regs {
		allRegs = append(allRegs, r...)
	}
	c.server.observeConsulRegistrations(allRegs)
	var all []Endpoint
	names := make([]string, 0, len(c.services))
	for n := range c.services {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		all = append(all, c.services[n]...)
	}
	_ = c.server.SetEndpoints(consulSource, all) // a refusal is logged and counted there
}
