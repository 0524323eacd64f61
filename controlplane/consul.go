package controlplane

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/gridmesh/gridmesh/internal/consulwatch"
)

// ConsulSource feeds endpoints from the Consul catalog into a Server: every
// service in the catalog with passing health checks, through consul/api
// blocking queries. A Consul instance's ServiceMeta "version" puts it in a
// version and "spiffe_id" sets its identity; its address is the service
// address, or the node's when the service has none.
type ConsulSource struct {
	client *api.Client
	server *Server
	// Backoff bounds retries while Consul is unreachable; endpoints already
	// known stay in force meanwhile.
	backoff consulwatch.Backoff

	mu       sync.Mutex
	services map[string][]Endpoint
}

// NewConsulSource returns a source that reads the Consul agent behind
// client and feeds s. Start it with Run.
func NewConsulSource(client *api.Client, s *Server) *ConsulSource {
	return &ConsulSource{client: client, server: s, services: map[string][]Endpoint{}}
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
				c.set(name, nil)
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
		var eps []Endpoint
		for _, e := range entries {
			if e.Service == nil {
				continue
			}
			host := e.Service.Address
			if host == "" && e.Node != nil {
				host = e.Node.Address
			}
			ep := Endpoint{
				Service:  name,
				Address:  net.JoinHostPort(host, strconv.Itoa(e.Service.Port)),
				Version:  e.Service.Meta["version"],
				SPIFFEID: e.Service.Meta["spiffe_id"],
			}
			if err := checkEndpoint(ep); err != nil {
				c.server.log.Warn("skipping consul instance", "service", name, "id", e.Service.ID, "err", err)
				continue
			}
			eps = append(eps, ep)
		}
		c.set(name, eps)
		return meta.LastIndex, nil
	}
}

func (c *ConsulSource) set(name string, eps []Endpoint) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(eps) == 0 {
		delete(c.services, name)
	} else {
		c.services[name] = eps
	}
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
