package httpclient

import (
	"context"
	"errors"
	"fmt"
	"google.golang.org/grpc/credentials"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/internal/httpbalance"
	"github.com/gridmesh/gridmesh/internal/httphost"
	"github.com/gridmesh/gridmesh/internal/httpxds"
	"github.com/gridmesh/gridmesh/internal/xdsresource"
	"github.com/gridmesh/gridmesh/internal/xdsstatus"
	"github.com/gridmesh/gridmesh/security"
)

// Config is what New needs. Identity, Expect and Registry are required;
// the rest may be left zero.
type Config struct {
	// Identity is the caller's SVID and trust bundles, presented and used
	// on every connection.
	Identity security.Source
	// Expect is the check a server's SPIFFE ID must pass when neither
	// discovery nor meshd names the IDs of its endpoint.
	Expect spiffeid.Matcher
	// Protocols are the HTTP versions offered, NextProtos their ALPN
	// names. Zero Protocols: HTTP/1.1 only.
	Protocols  http.Protocols
	NextProtos []string
	// Targets maps URL hosts (httphost.Normalize form, with or
	// without a port) to discovery targets.
	Targets map[string]string
	// ControlPlane is meshd's xDS address, for xds:/// targets and
	// "<name>.mesh" hosts; "" means none.
	ControlPlane string
	// ControlPlaneCreds secure the connection to meshd (mTLS with the
	// workload's SVID, accepting only meshd's ID). Required with
	// ControlPlane.
	ControlPlaneCreds credentials.TransportCredentials
	// Registry resolves consul:/// and static:/// targets.
	Registry *discovery.Registry
	// Balance is the balancing policy of consul:/// and static:///
	// targets; an xds:/// cluster's comes from meshd's CDS lb_policy.
	Balance httpbalance.Config

	// The stages of the pipeline the caller provides, each nil when off;
	// the package doc gives their order. Wrappers: the first given is the
	// outermost.
	Wrappers   []func(http.RoundTripper) http.RoundTripper
	Calls      func(http.RoundTripper) http.RoundTripper
	Resilience func(http.RoundTripper) http.RoundTripper
	Attempts   func(http.RoundTripper) http.RoundTripper

	// ServiceResilience, when set, is called once for each service the
	// transport starts following; a non-nil wrap it returns is that
	// service's resilience stage, used instead of Resilience for its
	// requests (mesh gives a consul:/// service one that follows the
	// service's resilience meta). release is called when the service is
	// closed.
	ServiceResilience func(*Service) (wrap func(http.RoundTripper) http.RoundTripper, release func())
	// RouteResilience, when set, gives a request whose meshd route has a
	// retry policy a resilience stage built from that policy (called once
	// per distinct policy), instead of the transport's Resilience. mesh
	// sets it when no policy is given in code, so meshd's route retries
	// apply as grpc-go applies them for Dial. A route without one keeps
	// Resilience: net/http has no transparent retry of requests that never
	// left the client, which grpc-go does, so the mesh's default policy
	// stands in for it.
	RouteResilience func(xdsresource.Retry) func(http.RoundTripper) http.RoundTripper
	// OnService, when set, is called once for each service the transport
	// starts following, before its first request is routed; the release
	// it returns is called when the service is closed. mesh shows the
	// service on its admin endpoint with it.
	OnService func(*Service) (release func())
	// OnXDS, when set, is called with every response on an xds:///
	// service's stream and the client's answer to it.
	OnXDS func(target string, u xdsstatus.Update)
	// Logger gets the warnings (meshd route parts not applied). Default:
	// silent.
	Logger *slog.Logger
}

// Transport is the HTTP client data plane, an http.RoundTripper. Build it
// with New; it is safe for concurrent use.
type Transport struct {
	cfg Config
	rt  http.RoundTripper // the pipeline, wrappers outermost
	// attempts is the pipeline beneath resilience (attempt telemetry,
	// balancing), which a service's own resilience stage wraps.
	attempts http.RoundTripper

	mu       sync.Mutex
	services map[string]*Service                     // by discovery target
	byHost   map[string]*Service                     // by URL host as requests give it
	byRetry  map[xdsresource.Retry]http.RoundTripper // route retry stages
	closed   bool
}

// New returns a Transport that follows services as requests name them. It
// does not block: a service's endpoints are looked up on its first
// request, which waits for them within the request's context.
func New(cfg Config) (*Transport, error) {
	switch {
	case cfg.Identity == nil:
		return nil, errors.New("httpclient: Config.Identity is required")
	case cfg.Expect == nil:
		return nil, errors.New("httpclient: Config.Expect is required")
	case cfg.Registry == nil:
		return nil, errors.New("httpclient: Config.Registry is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	t := &Transport{cfg: cfg, services: map[string]*Service{}, byHost: map[string]*Service{}}
	// Innermost first: balancing (identity beneath it, in each cluster's
	// connection pool), attempt telemetry, resilience, routing, call
	// telemetry, wrappers.
	var rt http.RoundTripper = balancer{}
	if cfg.Attempts != nil {
		rt = cfg.Attempts(rt)
	}
	t.attempts = rt
	if cfg.Resilience != nil {
		rt = cfg.Resilience(rt)
	}
	rt = serviceResilience{t: t, next: rt}
	rt = router{t: t, next: rt}
	if cfg.Calls != nil {
		rt = cfg.Calls(rt)
	}
	for i := len(cfg.Wrappers) - 1; i >= 0; i-- {
		rt = cfg.Wrappers[i](rt)
	}
	t.rt = rt
	return t, nil
}

// RoundTrip sends req through the pipeline to an endpoint of the service
// its URL host names.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	return t.rt.RoundTrip(req)
}

// CloseIdleConnections closes the idle connections to every endpoint.
func (t *Transport) CloseIdleConnections() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range t.services {
		s.eachCluster(func(c *cluster) { c.tr.CloseIdleConnections() })
	}
}

// Close stops following every service and closes idle connections;
// requests after Close fail with an error wrapping net.ErrClosed. It is
// safe to call more than once.
func (t *Transport) Close() error {
	t.mu.Lock()
	services := t.services
	t.services, t.byHost, t.closed = nil, nil, true
	t.mu.Unlock()
	var errs []error
	for _, s := range services {
		errs = append(errs, s.close())
		s.eachCluster(func(c *cluster) { c.tr.CloseIdleConnections() })
	}
	return errors.Join(errs...)
}

// targetFor maps a URL host to a discovery target.
func (t *Transport) targetFor(host string) (string, error) {
	host = httphost.Normalize(host)
	if target, ok := t.cfg.Targets[host]; ok {
		return target, nil
	}
	name, _, err := net.SplitHostPort(host)
	if err != nil {
		name = host
	}
	if target, ok := t.cfg.Targets[name]; ok {
		return target, nil
	}
	if svc, ok := strings.CutSuffix(name, ".mesh"); ok && svc != "" {
		if t.cfg.ControlPlane != "" {
			return "xds:///" + svc, nil
		}
		return "consul:///" + svc, nil
	}
	if err != nil {
		return "", fmt.Errorf("mesh: URL host %q names no service: give it a port, end it in .mesh, or map it with mesh.WithHTTPTarget", host)
	}
	return "static:///" + host, nil
}

// service returns the service host names, following it from now on if it
// is new.
func (t *Transport) service(host string) (*Service, error) {
	t.mu.Lock()
	s, ok := t.byHost[host]
	t.mu.Unlock()
	if ok {
		return s, nil
	}
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
		t.byHost[host] = s
		return s, nil
	}
	s = &Service{target: target, balanced: make(chan struct{})}
	s.main = t.newCluster("")
	if cluster, ok := strings.CutPrefix(target, "xds:///"); ok {
		err = t.watchXDS(s, cluster)
	} else {
		err = t.watchDiscovery(s)
	}
	if err != nil {
		return nil, fmt.Errorf("mesh: host %q: %w", host, err)
	}
	if t.cfg.ServiceResilience != nil {
		wrap, release := t.cfg.ServiceResilience(s)
		if wrap != nil {
			s.resilience = wrap(t.attempts)
		}
		if release != nil {
			closeWatch := s.close
			s.close = func() error {
				release()
				return closeWatch()
			}
		}
	}
	if t.cfg.OnService != nil {
		release, closeWatch := t.cfg.OnService(s), s.close
		s.close = func() error {
			release()
			return closeWatch()
		}
	}
	t.services[target] = s
	t.byHost[host] = s
	return s, nil
}

// decision is a request's routing, made once and read by the balancer on
// every attempt.
type decision struct {
	svc   *Service
	route *httpxds.Route // meshd's route decided; nil without one
	host  string         // the Host header the endpoints get
	// The request as routed, for a decision the first attempt makes.
	method, path string
	header       http.Header
	// cl is the cluster decided; nil until the service's first endpoints
	// arrive (see router.RoundTrip).
	cl atomic.Pointer[cluster]

	mu    sync.Mutex
	tried []string // endpoints attempted, to try others first
	buf   [2]string
}

type decisionKey struct{}

// cluster returns the decided cluster. A request routed before its
// service had endpoints is routed here, once, by its first attempt after
// waiting for them within ctx: inside resilience, whose timeout then
// bounds the wait, as grpc-go's picker waits for a resolver.
func (d *decision) cluster(ctx context.Context) (*cluster, error) {
	if c := d.cl.Load(); c != nil {
		return c, nil
	}
	if err := d.svc.wait(ctx); err != nil {
		return nil, fmt.Errorf("mesh: endpoints of %s: %w", d.svc.target, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if c := d.cl.Load(); c != nil {
		return c, nil
	}
	_, c, err := d.svc.route(d.method, d.path, d.header)
	if err != nil {
		return nil, err
	}
	d.cl.Store(c)
	return c, nil
}

// pick chooses an endpoint of cluster c, one not tried by this request
// while there are such.
func (d *decision) pick(c *cluster) (*httpbalance.Pick, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p, err := c.bal.Pick(d.tried)
	if errors.Is(err, httpbalance.ErrNoEndpoints) && len(d.tried) > 0 {
		p, err = c.bal.Pick(nil) // every endpoint tried: any again
	}
	if err != nil {
		return nil, err
	}
	if d.tried == nil {
		d.tried = d.buf[:0]
	}
	d.tried = append(d.tried, p.Addr)
	return p, nil
}

// router is the routing stage: one lookup of the service, its route and
// cluster per request (see the package doc).
// serviceResilience sends a request through its service's own resilience
// stage when it has one, else on to the transport's.
type serviceResilience struct {
	t    *Transport
	next http.RoundTripper
}

func (r serviceResilience) RoundTrip(req *http.Request) (*http.Response, error) {
	d, ok := req.Context().Value(decisionKey{}).(*decision)
	switch {
	case !ok:
	case d.route != nil && d.route.Retry != nil && r.t.cfg.RouteResilience != nil:
		return r.t.routeResilience(*d.route.Retry).RoundTrip(req)
	case d.svc.resilience != nil:
		return d.svc.resilience.RoundTrip(req)
	}
	return r.next.RoundTrip(req)
}

// routeResilience returns the resilience stage for a route retry policy,
// one per distinct policy, so its breaker and budget last across meshd's
// route updates.
func (t *Transport) routeResilience(p xdsresource.Retry) http.RoundTripper {
	t.mu.Lock()
	defer t.mu.Unlock()
	rt, ok := t.byRetry[p]
	if !ok {
		if t.byRetry == nil {
			t.byRetry = map[xdsresource.Retry]http.RoundTripper{}
		}
		rt = t.cfg.RouteResilience(p)(t.attempts)
		t.byRetry[p] = rt
	}
	return rt
}

type router struct {
	t    *Transport
	next http.RoundTripper
}

func (r router) RoundTrip(req *http.Request) (*http.Response, error) {
	svc, err := r.t.service(req.URL.Host)
	if err != nil {
		closeBody(req)
		return nil, err
	}
	d := &decision{svc: svc, host: req.Host, method: req.Method, path: req.URL.Path, header: req.Header}
	if d.host == "" {
		d.host = req.URL.Host
	}
	// Once the service has endpoints (every request but its first few),
	// the route and cluster are decided here, and the route's timeout
	// bounds the stages beneath. Before, the first attempt decides.
	var route *httpxds.Route
	if svc.ready() {
		var c *cluster
		if route, c, err = svc.route(req.Method, req.URL.Path, req.Header); err != nil {
			closeBody(req)
			return nil, err
		}
		d.cl.Store(c)
		d.route = route
	}
	ctx := context.WithValue(req.Context(), decisionKey{}, d)
	if route == nil || route.Timeout <= 0 {
		return r.next.RoundTrip(req.WithContext(ctx))
	}
	ctx, cancel := context.WithTimeout(ctx, route.Timeout)
	resp, err := r.next.RoundTrip(req.WithContext(ctx))
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

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// Routed returns the meshd route and the cluster a request was routed to,
// from the context of a request beneath the routing stage (attempt
// telemetry); "" for what is not decided or not named.
func Routed(ctx context.Context) (route, cluster string) {
	d, ok := ctx.Value(decisionKey{}).(*decision)
	if !ok {
		return "", ""
	}
	if d.route != nil {
		route = d.route.Name
	}
	if c := d.cl.Load(); c != nil {
		cluster = c.name
	}
	return route, cluster
}
