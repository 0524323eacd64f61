package httpclient

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/internal/httpbalance"
	"github.com/gridmesh/gridmesh/internal/httpxds"
	"github.com/gridmesh/gridmesh/internal/xdsbootstrap"
	"github.com/gridmesh/gridmesh/internal/xdsresource"
	"github.com/gridmesh/gridmesh/internal/xdsstatus"
)

// Service is one followed discovery target: its clusters, each with a
// balancer and a connection pool, and for xds:/// targets meshd's routes.
// Its methods are safe for concurrent use.
type Service struct {
	target string
	// resilience is the service's own resilience stage over the attempt
	// stages (Config.ServiceResilience); nil: the transport's.
	resilience http.RoundTripper
	wait       func(context.Context) error // blocks for the first endpoint set
	close      func() error
	// main is where requests go without routes: the endpoints of a
	// discovery target, the cluster an xds:/// target names.
	main *cluster
	// clusters are an xds:/// target's followed clusters, main included,
	// by name. A cluster stays for the service's life once followed (its
	// connections are closed with the service), emptied when meshd's
	// routes stop naming it.
	mu       sync.RWMutex
	clusters map[string]*cluster
	// routes are meshd's routes in force for an xds:/// service; nil:
	// every request goes to main.
	routes atomic.Pointer[[]*httpxds.Route]
	// xds records the xDS stream of an xds:/// target.
	xds *xdsstatus.Recorder
	// balanced is closed once main has its first endpoint set. A watch's
	// Wait returns as soon as the watch knows a set, which can be before
	// its update callback has handed the set to the balancer.
	balanced     chan struct{}
	balancedOnce sync.Once
}

// Target is the discovery target followed: "consul:///trading",
// "xds:///trading", "static:///10.0.0.1:8443".
func (s *Service) Target() string { return s.target }

// XDS is the record of an xds:/// service's stream, nil for other targets.
func (s *Service) XDS() *xdsstatus.Recorder { return s.xds }

// Endpoints returns the endpoints of the service's own cluster, in
// discovery's order, and its policy.
func (s *Service) Endpoints() ([]httpbalance.EndpointState, httpbalance.Policy) {
	return s.main.bal.Endpoints()
}

// Clusters calls f with the endpoints of every followed cluster, by name
// ("" for a discovery target's only cluster).
func (s *Service) Clusters(f func(name string, eps []httpbalance.EndpointState)) {
	s.eachCluster(func(c *cluster) {
		eps, _ := c.bal.Endpoints()
		f(c.name, eps)
	})
}

// Routes returns meshd's routes in force, nil when every request goes to
// the service's own cluster.
func (s *Service) Routes() []*httpxds.Route {
	if rp := s.routes.Load(); rp != nil {
		return *rp
	}
	return nil
}

// cluster is one set of endpoints with its balancer and connection pool:
// clusters may require different SPIFFE IDs of the same address.
type cluster struct {
	name string
	bal  *httpbalance.Balancer
	tr   *http.Transport
	// ids is the check endpoints without an ID of their own must pass,
	// from meshd's SAN matchers; nil: Config.Expect.
	ids atomic.Pointer[spiffeid.Matcher]
}

// update hands a new endpoint set to the balancer.
func (c *cluster) update(set []httpbalance.Endpoint) {
	if c.bal.Update(set) {
		c.tr.CloseIdleConnections()
	}
}

func (t *Transport) newCluster(name string) *cluster {
	c := &cluster{name: name, bal: httpbalance.New(t.cfg.Balance)}
	c.tr = t.endpointTransport(c)
	return c
}

// lookup returns the followed cluster name, nil when there is none.
func (s *Service) lookup(name string) *cluster {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.clusters[name]
}

// eachCluster calls f on every cluster of the service.
func (s *Service) eachCluster(f func(*cluster)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if len(s.clusters) == 0 {
		f(s.main)
	}
	for _, c := range s.clusters {
		f(c)
	}
}

func (s *Service) markBalanced() { s.balancedOnce.Do(func() { close(s.balanced) }) }

// ready reports whether the service's own cluster has its first
// endpoint set (and an xds:/// service meshd's routes, if any).
func (s *Service) ready() bool {
	select {
	case <-s.balanced:
		return true
	default:
		return false
	}
}

// route returns the meshd route a request takes (nil without routes) and
// the cluster it goes to: by the route's weights, else main.
func (s *Service) route(method, path string, h http.Header) (*httpxds.Route, *cluster, error) {
	rp := s.routes.Load()
	if rp == nil || *rp == nil {
		return nil, s.main, nil
	}
	r := httpxds.Find(*rp, path, h)
	if r == nil {
		return nil, nil, fmt.Errorf("mesh: no meshd route of %s matches %s %s", s.target, method, path)
	}
	if r.Unsupported != "" {
		return nil, nil, fmt.Errorf("mesh: %s: %s", s.target, r.Unsupported)
	}
	name := r.Pick()
	c := s.lookup(name)
	if c == nil {
		return nil, nil, fmt.Errorf("mesh: %s: cluster %q of route %q is not known to meshd", s.target, name, r.Name)
	}
	return r, c, nil
}

// waitFor returns the service's wait: the watch's first set (or its
// error, when ctx ends), then the balancer having it.
func (s *Service) waitFor(watchWait func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		select {
		case <-s.balanced:
			return nil
		default:
		}
		if err := watchWait(ctx); err != nil {
			return err
		}
		select {
		case <-s.balanced:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (t *Transport) watchDiscovery(s *Service) error {
	w, err := t.cfg.Registry.Watch(s.target, func(eps []discovery.Endpoint, err error) {
		if err != nil {
			return
		}
		set := make([]httpbalance.Endpoint, len(eps))
		for i, e := range eps {
			set[i] = httpbalance.Endpoint{Addr: e.Addr, ID: e.ID, Weight: e.Weight}
		}
		s.main.update(set)
		s.markBalanced()
	})
	if err != nil {
		return err
	}
	s.wait = s.waitFor(func(ctx context.Context) error { _, err := w.Wait(ctx); return err })
	s.close = w.Close
	return nil
}

func (t *Transport) watchXDS(s *Service, name string) error {
	if t.cfg.ControlPlane == "" {
		return errors.New("xds:/// targets need mesh.WithControlPlane(meshd address)")
	}
	// A service's own cluster ("trading", not "trading/v2") has meshd
	// routes, named after the service: follow and apply them.
	listener := ""
	if !strings.Contains(name, "/") {
		listener = name
	}
	rec := xdsstatus.New(func(u xdsstatus.Update) {
		if t.cfg.OnXDS != nil {
			t.cfg.OnXDS(s.target, u)
		}
	})
	s.xds = rec
	s.main.name = name
	s.clusters = map[string]*cluster{name: s.main}
	var lastWarned string
	w, err := httpxds.Start(httpxds.Config{ServerURI: t.cfg.ControlPlane, Credentials: t.cfg.ControlPlaneCreds, NodeID: xdsbootstrap.DefaultNodeID(), Cluster: name, Listener: listener,
		DialOptions: []grpc.DialOption{grpc.WithChainStreamInterceptor(rec.StreamInterceptor())}}, func(u httpxds.Update) {
		s.mu.Lock()
		for cname, xc := range u.Clusters {
			c := s.clusters[cname]
			if c == nil {
				c = t.newCluster(cname)
				s.clusters[cname] = c
			}
			t.applyCluster(c, xc)
		}
		for cname, c := range s.clusters {
			if _, ok := u.Clusters[cname]; !ok {
				c.update(nil)
			}
		}
		s.mu.Unlock()
		// Routes only after the clusters they name are in place.
		routes := u.Routes
		s.routes.Store(&routes)
		s.markBalanced()
		if un := httpxds.Unapplied(routes); len(un) > 0 {
			var names []string
			for _, r := range un {
				names = append(names, r.Name)
			}
			if key := strings.Join(names, ","); key != lastWarned {
				lastWarned = key
				t.cfg.Logger.Warn("meshd route retries and faults not applied by the HTTP client: it applies their match, clusters and timeout only",
					"target", s.target, "routes", names)
			}
		}
	})
	if err != nil {
		rec.Close()
		return err
	}
	s.wait = s.waitFor(func(ctx context.Context) error { _, err := w.Wait(ctx); return err })
	s.close = func() error {
		rec.Close()
		return w.Close()
	}
	return nil
}

// applyCluster hands a cluster's state from meshd to its balancer and
// dialer.
func (t *Transport) applyCluster(c *cluster, xc httpxds.Cluster) {
	if xc.Policy == "least_request" {
		c.bal.SetPolicy(httpbalance.LeastRequest)
	} else {
		c.bal.SetPolicy(httpbalance.RoundRobin)
	}
	if len(xc.SANs) > 0 {
		sans, name := xc.SANs, c.name
		m := spiffeid.Matcher(func(id spiffeid.ID) error {
			if xdsresource.MatchAny(sans, id.String()) {
				return nil
			}
			return fmt.Errorf("unexpected ID %q: xDS cluster %q accepts %v", id, name, sans)
		})
		c.ids.Store(&m)
	} else {
		c.ids.Store(nil)
	}
	set := make([]httpbalance.Endpoint, len(xc.Endpoints))
	for i, e := range xc.Endpoints {
		set[i] = httpbalance.Endpoint{Addr: e.Addr, Weight: int(e.Weight)}
	}
	c.update(set)
}
