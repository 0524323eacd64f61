package mesh

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"google.golang.org/grpc"

	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/internal/httpbalance"
	"github.com/gridmesh/gridmesh/internal/httpxds"
	"github.com/gridmesh/gridmesh/internal/xdsbootstrap"
	"github.com/gridmesh/gridmesh/internal/xdsstatus"
	"github.com/gridmesh/gridmesh/security"
	"github.com/gridmesh/gridmesh/telemetry"
	"github.com/gridmesh/gridmesh/telemetry/admin"
)

// HTTPClient returns an *http.Client whose transport is NewHTTPTransport's.
// Release it with client.Transport.(*mesh.HTTPTransport).Close() when done
// (it stops the discovery watches), or build the client yourself around a
// NewHTTPTransport you keep.
func HTTPClient(opts ...DialOption) (*http.Client, error) {
	t, err := NewHTTPTransport(opts...)
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: t}, nil
}

// HTTPTransport is the mesh's http.RoundTripper. A request's URL host names
// a service; the scheme may be http or https and is ignored: the transport
// always speaks mTLS, presenting the caller's SVID and verifying the
// server's. Hosts map to endpoints like this:
//
//   - a host given to WithHTTPTarget (with or without its port) uses that
//     discovery target: http://trading.mesh/v1/trades with
//     WithHTTPTarget("trading.mesh", "consul:///trading");
//   - any other "<name>.mesh" host uses xds:///<name> when WithControlPlane
//     is given, else consul:///<name> (the Registry of WithRegistry must
//     have Consul);
//   - any other host:port is a single endpoint (static:///host:port).
//
// xds:///<cluster> targets (with WithControlPlane) follow meshd. For a
// service ("xds:///trading", what http://trading.mesh/ maps to) the
// transport applies meshd's routes for it: each request takes the first
// route whose match fits its URL path (path prefix, exact path or regex;
// case-sensitive unless the route says otherwise) and headers (names
// case-insensitive; exact, prefix, regex, present, range, inverted), as
// grpc-go matches them; then a cluster by the route's weights (a weighted
// split between "trading/v1" and "trading/v2", at random by weight); then
// an endpoint of that cluster. The route's timeout (max_stream_duration)
// bounds the request, its retries and the reading of its response body,
// when it is shorter than the request's own deadline; it fails the
// request with an error wrapping context.DeadlineExceeded. A request no
// route matches fails, as in grpc-go (meshd always ends with a
// catch-all). Before meshd's routes arrive, or when it has none for the
// service, every request goes to the service's own cluster; new routes
// take effect once every cluster they name has its endpoints, the
// previous ones staying until then. Routes' retry policies and fault
// injection are NOT applied (the transport has its own resilience
// policies, and meshd's faults are gRPC codes): they are logged once and
// listed on the admin endpoint as not applied. A version cluster
// ("xds:///trading/v2") is followed alone, without routes.
//
// Each cluster the routes name is followed (CDS + EDS) over the one ADS
// stream: its endpoints, its load-balancing policy (CDS lb_policy: round
// robin or least request; ring hash falls back to round robin) unless
// WithBalancer is given, and the SPIFFE IDs its mTLS context accepts (CDS
// subject alternative names). Each cluster has its own balancer and
// connection pool. meshd's circuit breakers and outlier detection are not
// applied: use the resilience policies.
//
// Requests are balanced over the target's endpoints by WithBalancer's
// policy: round robin (the default; smooth weighted by the endpoints'
// Consul or xDS weights), least request or pick first; other policies make
// HTTPClient fail. HTTP/2 is
// used when the server offers it. Each endpoint must present the
// SPIFFE ID discovery gives for it; without one, WithServerID's, else any ID
// in WithServerTrustDomain's trust domain, else any ID in the caller's own
// trust domain. A request that could not reach an endpoint (connection
// refused, handshake failed or the wrong SPIFFE ID) was never sent, so it
// is sent to another endpoint, as long as its body can be replayed
// (GetBody); the endpoint is skipped for a while.
//
// The round trip runs, outermost first: the meshd route's timeout; the
// WithHTTPRoundTripper wrappers; the resilience policies (WithResilience;
// by default a client of its own with resilience.DefaultConfig(), keyed by
// the URL host; off with WithoutResilience), so a retry is routed and
// balanced anew; OpenTelemetry (otelhttp: a client span per attempt and
// W3C trace context in the headers, to the providers of WithTracerProvider
// and WithMeterProvider; off with WithoutTelemetry); then routing to a
// cluster and balancing over its endpoints. It is safe for concurrent use.
type HTTPTransport struct {
	rt       http.RoundTripper
	identity security.Source
	expect   spiffeid.Matcher
	cfg      httpDialConfig
	// controlPlane is meshd's address for xds:/// targets; policySet says
	// WithBalancer was given, which then wins over xDS's policy.
	controlPlane string
	policySet    bool
	registry     *discovery.Registry
	policy       httpbalance.Config
	tel          *meshTelemetry

	mu       sync.Mutex
	services map[string]*httpService // by discovery target
	closed   bool
}

type httpService struct {
	target string
	wait   func(context.Context) error // blocks for the first endpoint set
	close  func() error
	// main is where requests go without routes: the endpoints of a
	// discovery target, the cluster an xds:/// target names.
	main *httpCluster
	// clusters are an xds:/// target's followed clusters, main included,
	// by name. A cluster stays for the service's life once followed (its
	// connections are closed with the service), emptied when meshd's
	// routes stop naming it.
	mu       sync.RWMutex
	clusters map[string]*httpCluster
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

// httpCluster is one set of endpoints with its balancer and connection
// pool: clusters may require different SPIFFE IDs of the same address.
type httpCluster struct {
	name string
	bal  *httpbalance.Balancer
	tr   *http.Transport
	// ids is the set of IDs endpoints without their own may present, from
	// xDS; nil: the transport's default expectation.
	ids atomic.Pointer[spiffeid.Matcher]
}

// update hands a new endpoint set to the balancer.
func (c *httpCluster) update(set []httpbalance.Endpoint) {
	if c.bal.Update(set) {
		c.tr.CloseIdleConnections()
	}
}

func (t *HTTPTransport) newCluster(name string) *httpCluster {
	c := &httpCluster{name: name, bal: httpbalance.New(t.policy)}
	c.tr = t.endpointTransport(c)
	return c
}

// cluster returns the followed cluster name, nil when there is none.
func (s *httpService) cluster(name string) *httpCluster {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.clusters[name]
}

// eachCluster calls f on every cluster of the service.
func (s *httpService) eachCluster(f func(*httpCluster)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if len(s.clusters) == 0 {
		f(s.main)
	}
	for _, c := range s.clusters {
		f(c)
	}
}

func (s *httpService) markBalanced() { s.balancedOnce.Do(func() { close(s.balanced) }) }

// matchRoute returns the meshd route req takes, nil when none or without
// routes.
func (s *httpService) matchRoute(req *http.Request) *httpxds.Route {
	rp := s.routes.Load()
	if rp == nil || *rp == nil {
		return nil
	}
	return httpxds.Find(*rp, req.URL.Path, req.Header)
}

// route picks the cluster for req: by meshd's routes when there are, else
// main.
func (s *httpService) route(req *http.Request) (*httpCluster, error) {
	rp := s.routes.Load()
	if rp == nil || *rp == nil {
		return s.main, nil
	}
	r := httpxds.Find(*rp, req.URL.Path, req.Header)
	if r == nil {
		return nil, fmt.Errorf("mesh: no meshd route of %s matches %s %s", s.target, req.Method, req.URL.Path)
	}
	if r.Unsupported != "" {
		return nil, fmt.Errorf("mesh: %s: %s", s.target, r.Unsupported)
	}
	name := r.Pick()
	c := s.cluster(name)
	if c == nil {
		return nil, fmt.Errorf("mesh: %s: cluster %q of route %q is not known to meshd", s.target, name, r.Name)
	}
	return c, nil
}

// waitFor returns the service's wait: the watch's first set (or its
// error, when ctx ends), then the balancer having it.
func (s *httpService) waitFor(watchWait func(context.Context) error) func(context.Context) error {
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

// NewHTTPTransport returns the mesh's HTTP transport (see HTTPTransport).
// It does not block: a service's endpoints are looked up on its first
// request, which waits for them within the request's context. Close it
// when done.
func NewHTTPTransport(opts ...DialOption) (*HTTPTransport, error) {
	var cfg dialConfig
	for _, o := range opts {
		o.applyDial(&cfg)
	}
	if cfg.identity == nil {
		return nil, errors.New("mesh: HTTPClient has no identity: pass mesh.WithIdentity(src), with src from security.NewWorkloadAPISource, security.NewFileSource or a security.DevCA")
	}
	expect, err := cfg.expectedServer()
	if err != nil {
		return nil, fmt.Errorf("mesh: HTTPClient: %w", err)
	}
	policy, err := httpBalancePolicy(cfg.discovery.balancer)
	if err != nil {
		return nil, err
	}
	tel, err := newDialTelemetry(&cfg.commonConfig)
	if err != nil {
		return nil, fmt.Errorf("mesh: HTTPClient: %w", err)
	}
	rc, err := cfg.resilienceClient(tel)
	if err != nil {
		tel.close()
		return nil, fmt.Errorf("mesh: HTTPClient: %w", err)
	}
	for host, target := range cfg.http.targets {
		if cluster, ok := strings.CutPrefix(target, "xds:///"); ok {
			if cluster == "" || cfg.xds.controlPlane == "" {
				return nil, fmt.Errorf("mesh: WithHTTPTarget(%q, %q): an xds:///<cluster> target needs a cluster name and mesh.WithControlPlane(meshd address)", host, target)
			}
			continue
		}
		if _, err := discovery.ParseTarget(target); err != nil {
			return nil, fmt.Errorf("mesh: WithHTTPTarget(%q, %q): %w", host, target, err)
		}
	}
	reg := cfg.discovery.registry
	if reg == nil {
		if reg, err = discovery.New(discovery.Config{}); err != nil {
			return nil, fmt.Errorf("mesh: HTTPClient: %w", err)
		}
	}
	t := &HTTPTransport{
		identity:     cfg.identity,
		expect:       expect,
		cfg:          cfg.http,
		controlPlane: cfg.xds.controlPlane,
		policySet:    cfg.discovery.balancer != nil,
		registry:     reg,
		policy:       policy,
		services:     map[string]*httpService{},
	}
	t.tel = tel
	self, _ := security.ID(cfg.identity)
	// Mesh metrics per attempt, with the endpoint that served it.
	var rt http.RoundTripper = telemetry.HTTPTransport(tel.metrics, self.String(), "", balancedTransport{t})
	if !cfg.telemetry.off {
		rt = otelhttp.NewTransport(rt, cfg.otelhttpOptions()...)
	}
	if rc != nil {
		rt = rc.RoundTripper(rt)
	}
	for i := len(cfg.http.wrappers) - 1; i >= 0; i-- {
		rt = cfg.http.wrappers[i](rt)
	}
	t.rt = rt
	return t, nil
}

func httpBalancePolicy(bp *discovery.Balancer) (httpbalance.Config, error) {
	var b discovery.Balancer
	if bp != nil {
		b = *bp
	}
	if err := b.Validate(); err != nil {
		return httpbalance.Config{}, fmt.Errorf("mesh: WithBalancer: %w", err)
	}
	if b.Outlier != nil {
		return httpbalance.Config{}, errors.New("mesh: WithBalancer: Outlier is not supported by HTTPClient; it skips endpoints that refuse connections on its own")
	}
	switch b.Policy {
	case "", discovery.RoundRobin:
		return httpbalance.Config{Policy: httpbalance.RoundRobin}, nil
	case discovery.LeastRequest:
		return httpbalance.Config{Policy: httpbalance.LeastRequest, Choices: int(b.ChoiceCount)}, nil
	case discovery.PickFirst:
		return httpbalance.Config{Policy: httpbalance.PickFirst}, nil
	}
	return httpbalance.Config{}, fmt.Errorf("mesh: WithBalancer: Policy %q is not supported by HTTPClient; use %q, %q or %q",
		b.Policy, discovery.RoundRobin, discovery.LeastRequest, discovery.PickFirst)
}

// RoundTrip sends req to an endpoint of the service its URL host names.
// A meshd route's timeout bounds the whole request, retries included, as
// grpc-go's max_stream_duration bounds a call.
func (t *HTTPTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var route *httpxds.Route
	if svc, err := t.service(req.URL.Host); err == nil {
		route = svc.matchRoute(req)
	}
	if route == nil || route.Timeout <= 0 {
		return t.rt.RoundTrip(req)
	}
	ctx, cancel := context.WithTimeout(req.Context(), route.Timeout)
	resp, err := t.rt.RoundTrip(req.WithContext(ctx))
	if err != nil {
		defer cancel()
		if req.Context().Err() == nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("mesh: %s: meshd route %q timeout %s: %w (%v)", req.URL.Host, route.Name, route.Timeout, context.DeadlineExceeded, err)
		}
		return nil, err
	}
	// The timeout covers reading the body too.
	resp.Body = &doneBody{ReadCloser: resp.Body, done: cancel}
	return resp, nil
}

// AdminAddr returns the address of the admin endpoint the transport shows
// on, or "" without WithAdmin. Useful with port 0.
func (t *HTTPTransport) AdminAddr() string {
	if t.tel == nil || t.tel.admin == nil {
		return ""
	}
	return t.tel.admin.Addr()
}

// CloseIdleConnections closes the idle connections to every endpoint.
func (t *HTTPTransport) CloseIdleConnections() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range t.services {
		s.eachCluster(func(c *httpCluster) { c.tr.CloseIdleConnections() })
	}
}

// Close stops the discovery watches and closes idle connections; requests
// after Close fail with an error wrapping net.ErrClosed. It is safe to call
// more than once.
func (t *HTTPTransport) Close() error {
	t.mu.Lock()
	services := t.services
	t.services, t.closed = nil, true
	t.mu.Unlock()
	var errs []error
	for _, s := range services {
		errs = append(errs, s.close())
		s.eachCluster(func(c *httpCluster) { c.tr.CloseIdleConnections() })
	}
	t.tel.close()
	return errors.Join(errs...)
}

// targetFor maps a URL host to a discovery target.
func (t *HTTPTransport) targetFor(host string) (string, error) {
	host = security.NormalizeHost(host)
	if target, ok := t.cfg.targets[host]; ok {
		return target, nil
	}
	name, _, err := net.SplitHostPort(host)
	if err != nil {
		name = host
	}
	if target, ok := t.cfg.targets[name]; ok {
		return target, nil
	}
	if svc, ok := strings.CutSuffix(name, ".mesh"); ok && svc != "" {
		if t.controlPlane != "" {
			return "xds:///" + svc, nil
		}
		return "consul:///" + svc, nil
	}
	if err != nil {
		return "", fmt.Errorf("mesh: URL host %q names no service: give it a port, end it in .mesh, or map it with mesh.WithHTTPTarget", host)
	}
	return "static:///" + host, nil
}

func (t *HTTPTransport) service(host string) (*httpService, error) {
	target, err := t.targetFor(host)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, fmt.Errorf("mesh: HTTP transport: %w", net.ErrClosed)
	}
	if s, ok := t.services[target]; ok {
		return s, nil
	}
	s := &httpService{target: target, main: t.newCluster(""), balanced: make(chan struct{})}
	if cluster, ok := strings.CutPrefix(target, "xds:///"); ok {
		err = t.watchXDS(s, cluster)
	} else {
		err = t.watchDiscovery(s)
	}
	if err != nil {
		return nil, fmt.Errorf("mesh: host %q: %w", host, err)
	}
	t.showOnAdmin(s)
	t.services[target] = s
	return s, nil
}

// showOnAdmin lists the service on the admin endpoint until it is closed:
// its balancer, endpoints (with what meshd sent and the cluster, for
// xds:///, of every followed cluster) and, for xds:///, what its xDS
// stream holds and the parts of meshd's routes not applied.
func (t *HTTPTransport) showOnAdmin(s *httpService) {
	if t.tel == nil || t.tel.admin == nil {
		return
	}
	p := admin.Provider{
		Component: admin.Component{Kind: "http-client", Name: s.target},
		Identity:  func() admin.Identity { return identityView(t.identity, t.tel.self) },
		Targets: func() []admin.Target {
			eps, policy := s.main.bal.Endpoints()
			tg := admin.Target{Target: s.target, Balancer: policy.String(), Source: scheme(s.target), Endpoints: []admin.Endpoint{}}
			if s.xds != nil {
				ejected := map[[2]string]bool{} // cluster, address
				s.eachCluster(func(c *httpCluster) {
					ceps, _ := c.bal.Endpoints()
					for _, e := range ceps {
						ejected[[2]string{c.name, e.Addr}] = e.Ejected
					}
				})
				for _, e := range s.xds.Endpoints() {
					tg.Endpoints = append(tg.Endpoints, admin.Endpoint{Cluster: e.Cluster, Address: e.Address,
						Identity: strings.Join(e.IDs, " "), State: e.Health, Weight: e.Weight, Ejected: ejected[[2]string{e.Cluster, e.Address}]})
				}
				return []admin.Target{tg}
			}
			for _, e := range eps {
				ep := admin.Endpoint{Address: e.Addr, Weight: uint32(max(e.Weight, 1)), Ejected: e.Ejected}
				if !e.ID.IsZero() {
					ep.Identity = e.ID.String()
				}
				tg.Endpoints = append(tg.Endpoints, ep)
			}
			return []admin.Target{tg}
		},
		Policies: func() []admin.Policy {
			var ps []admin.Policy
			if t.tel.policies != nil {
				ps = t.tel.policies()
			}
			if rp := s.routes.Load(); rp != nil {
				ps = append(ps, unappliedRoutes(s.target, *rp)...)
			}
			return ps
		},
	}
	if s.xds != nil {
		p.XDS = s.xds.ClientConfig
	}
	unregister := t.tel.admin.Register(p)
	closeWatch := s.close
	s.close = func() error {
		unregister()
		return closeWatch()
	}
}

func (t *HTTPTransport) watchDiscovery(s *httpService) error {
	w, err := t.registry.Watch(s.target, func(eps []discovery.Endpoint, err error) {
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

func (t *HTTPTransport) watchXDS(s *httpService, cluster string) error {
	if t.controlPlane == "" {
		return errors.New("xds:/// targets need mesh.WithControlPlane(meshd address)")
	}
	// A service's own cluster ("trading", not "trading/v2") has meshd
	// routes, named after the service: follow and apply them.
	listener := ""
	if !strings.Contains(cluster, "/") {
		listener = cluster
	}
	rec := xdsstatus.New(func(u xdsstatus.Update) { t.tel.xdsUpdate(s.target, u) })
	s.xds = rec
	s.main.name = cluster
	s.clusters = map[string]*httpCluster{cluster: s.main}
	var lastWarned string
	w, err := httpxds.Start(httpxds.Config{ServerURI: t.controlPlane, NodeID: xdsbootstrap.DefaultNodeID(), Cluster: cluster, Listener: listener,
		DialOptions: []grpc.DialOption{grpc.WithChainStreamInterceptor(rec.StreamInterceptor())}}, func(u httpxds.Update) {
		s.mu.Lock()
		for name, xc := range u.Clusters {
			c := s.clusters[name]
			if c == nil {
				c = t.newCluster(name)
				s.clusters[name] = c
			}
			t.applyCluster(c, xc)
		}
		for name, c := range s.clusters {
			if _, ok := u.Clusters[name]; !ok {
				c.update(nil)
			}
		}
		s.mu.Unlock()
		// Routes only after the clusters they name are in place.
		routes := u.Routes
		s.routes.Store(&routes)
		s.markBalanced()
		if ps := unappliedRoutes(s.target, routes); len(ps) > 0 {
			var names []string
			for _, p := range ps {
				names = append(names, p.Name)
			}
			if key := strings.Join(names, ","); key != lastWarned {
				lastWarned = key
				t.tel.log().Warn("meshd route retries and faults not applied by the HTTP client: it applies their match, clusters and timeout only",
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
func (t *HTTPTransport) applyCluster(c *httpCluster, xc httpxds.Cluster) {
	if !t.policySet {
		if xc.Policy == "least_request" {
			c.bal.SetPolicy(httpbalance.LeastRequest)
		} else {
			c.bal.SetPolicy(httpbalance.RoundRobin)
		}
	}
	if len(xc.IDs) > 0 {
		ids, name := xc.IDs, c.name
		m := spiffeid.Matcher(func(id spiffeid.ID) error {
			for _, want := range ids {
				if id == want {
					return nil
				}
			}
			return fmt.Errorf("unexpected ID %q: xDS cluster %q accepts %v", id, name, ids)
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

// unappliedRoutes lists the parts of meshd's routes for an xds:/// service
// that the HTTP client does not apply (retry policies, fault injection),
// one policy per route that has any. Routes no request reaches are left
// out.
func unappliedRoutes(target string, routes []*httpxds.Route) []admin.Policy {
	var ps []admin.Policy
	for _, r := range routes {
		if r.Unreachable || len(r.Unapplied) == 0 {
			continue
		}
		name := r.Name
		if name == "" {
			name = "-"
		}
		ps = append(ps, admin.Policy{Kind: "route", Scope: target, Name: name, Source: "xds",
			Detail: "NOT APPLIED by the HTTP client: " + strings.Join(r.Unapplied, "; ") +
				" (the route's match, clusters and timeout apply)"})
	}
	return ps
}

// endpointTransport is the connection pool of one cluster. Its dialer
// verifies each endpoint against the SPIFFE ID discovery gave for it, else
// the cluster's IDs from xDS, else the transport's expectation.
func (t *HTTPTransport) endpointTransport(s *httpCluster) *http.Transport {
	protocols := httpProtocols(t.cfg.protocols)
	alpn := nextProtos(protocols)
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Protocols:           &protocols,
		ForceAttemptHTTP2:   protocols.HTTP2(),
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			expect := t.expect
			if m := s.ids.Load(); m != nil {
				expect = *m
			}
			if id, ok := s.bal.ID(addr); ok && !id.IsZero() {
				expect = spiffeid.MatchID(id)
			}
			cfg := security.ClientTLSConfig(t.identity, expect)
			cfg.NextProtos = alpn
			raw, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, &notSentError{err}
			}
			conn := tls.Client(raw, cfg)
			if err := conn.HandshakeContext(ctx); err != nil {
				raw.Close()
				return nil, &notSentError{fmt.Errorf("mesh: TLS handshake with %s: %w", addr, err)}
			}
			return conn, nil
		},
	}
	return tr
}

// notSentError marks a failure before any byte of the request was sent.
type notSentError struct{ err error }

func (e *notSentError) Error() string { return e.err.Error() }
func (e *notSentError) Unwrap() error { return e.err }

// balancedTransport picks an endpoint for each request and moves on to the
// next when one cannot be reached.
type balancedTransport struct{ t *HTTPTransport }

func (b balancedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	svc, err := b.t.service(req.URL.Host)
	if err != nil {
		closeBody(req)
		return nil, err
	}
	if err := svc.wait(req.Context()); err != nil {
		closeBody(req)
		return nil, fmt.Errorf("mesh: endpoints of %s: %w", svc.target, err)
	}
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	cl, err := svc.route(req)
	if err != nil {
		closeBody(req)
		return nil, err
	}
	var tried []string
	var lastErr error
	resent := 0
	for {
		pick, err := cl.bal.Pick(tried)
		if err != nil {
			closeBody(req)
			if lastErr != nil {
				return nil, lastErr
			}
			if cl.name != "" {
				return nil, fmt.Errorf("mesh: %s (%s cluster %s): %w", host, svc.target, cl.name, err)
			}
			return nil, fmt.Errorf("mesh: %s (%s): %w", host, svc.target, err)
		}
		out := req.Clone(req.Context())
		out.URL.Scheme = "https"
		out.URL.Host = pick.Addr
		out.Host = host
		if len(tried) > 0 && req.GetBody != nil && req.Body != nil && req.Body != http.NoBody {
			if out.Body, err = req.GetBody(); err != nil {
				pick.Done()
				return nil, fmt.Errorf("mesh: replaying the request body: %w", err)
			}
		}
		tried = append(tried, pick.Addr)
		resp, err := cl.tr.RoundTrip(out)
		if err != nil {
			pick.Done()
			lastErr = fmt.Errorf("mesh: %s endpoint %s: %w", host, pick.Addr, err)
			if req.Context().Err() != nil || !bodyReplayable(req) {
				return nil, lastErr
			}
			var ns *notSentError
			if errors.As(err, &ns) {
				pick.Failed()
				continue
			}
			// The connection failed after the request may have been sent,
			// typically a connection the server had just closed. Like
			// net/http on a reused connection, send a request that is safe
			// to repeat once more, to another endpoint.
			if resent == 0 && idempotent(req) {
				resent++
				continue
			}
			return nil, lastErr
		}
		pick.Succeeded()
		resp.Body = &doneBody{ReadCloser: resp.Body, done: pick.Done}
		return resp, nil
	}
}

func bodyReplayable(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
}

// idempotent is net/http's rule for requests it replays on a new
// connection: a safe method, or an idempotency key.
func idempotent(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, key := req.Header["Idempotency-Key"]
	_, xkey := req.Header["X-Idempotency-Key"]
	return key || xkey
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// doneBody ends the request's count on its endpoint when the body is
// closed (or fully read).
type doneBody struct {
	io.ReadCloser
	done func()
}

func (b *doneBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.done()
	}
	return n, err
}

func (b *doneBody) Close() error {
	b.done()
	return b.ReadCloser.Close()
}

// ServerID returns the SPIFFE ID the server of resp presented (verified by
// the mesh's client).
func ServerID(resp *http.Response) (spiffeid.ID, bool) {
	if resp == nil || resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
		return spiffeid.ID{}, false
	}
	id, err := x509svid.IDFromCert(resp.TLS.PeerCertificates[0])
	return id, err == nil
}
