package mesh

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"

	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/internal/admin"
	"github.com/gridmesh/gridmesh/internal/httpbalance"
	"github.com/gridmesh/gridmesh/internal/httpxds"
	"github.com/gridmesh/gridmesh/internal/xdsresource"
	"github.com/gridmesh/gridmesh/mesh/internal/httpclient"
	"github.com/gridmesh/gridmesh/resilience"
	"github.com/gridmesh/gridmesh/security"
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
// previous ones staying until then. A route's retry policy applies as
// grpc-go applies it (num_retries, backoff; retry_on with no code grpc-go
// knows turns retries off), unless a policy is given in code, which wins;
// what is retried follows the mesh's safety rules (only requests that are
// idempotent, carry an Idempotency-Key, or never reached the server; on
// 502, 503, 504, 429 and connection failures). Routes' fault injection is
// NOT applied (meshd's faults are gRPC codes): it is logged once and
// listed on the admin endpoint as not applied. A version cluster
// ("xds:///trading/v2") is followed alone, without routes.
//
// Each cluster the routes name is followed (CDS + EDS) over the one ADS
// stream: its endpoints, its load-balancing policy (CDS lb_policy: round
// robin or least request; ring hash falls back to round robin; WithBalancer
// is refused here, as by Dial), and the SPIFFE IDs its mTLS context accepts (CDS
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
// trust domain. An endpoint that cannot be reached (connection refused,
// handshake failed or the wrong SPIFFE ID) is skipped for a while.
//
// The round trip runs, outermost first, the stages a gRPC call through
// Dial runs:
//
//   - the WithHTTPRoundTripper wrappers, which see the request as the
//     application made it;
//   - the mesh metrics, one call per request whatever the retries beneath
//     (labelled by both SPIFFE IDs; on when a MeterProvider is an SDK one or
//     WithAdmin is given, as for gRPC);
//   - routing: the request's service, meshd route and cluster are decided
//     once, and the route's timeout bounds the rest (a service's first
//     requests, sent before its endpoints are known, wait for them inside
//     resilience and are routed once they are, without the route's
//     timeout);
//   - the resilience policies (WithResilience; by default a client of its
//     own with resilience.DefaultConfig(), keyed by the URL host; off with
//     WithoutResilience), the only stage that retries: idempotent requests,
//     requests with an Idempotency-Key header (the header
//     WithIdempotency's servers deduplicate), and any request that never
//     reached a server (refused connection, failed handshake, HTTP/2
//     stream refused or above a GOAWAY's last stream), which is sent to
//     another endpoint when its body can be replayed (GetBody). With
//     WithoutResilience such a request fails, and the next one goes
//     elsewhere. (Beneath the mesh, net/http itself resends on HTTP/1.1 a
//     request whose reused connection the server closed before any
//     answer, if it is idempotent or carries Idempotency-Key or
//     X-Idempotency-Key; the mesh cannot turn that off. Servers of
//     NewHTTPServer deduplicate Idempotency-Key only.);
//   - attempt telemetry: each attempt counted (mesh.http.client.attempts)
//     and, for a sampled call, a span per attempt whose W3C trace context
//     goes in its headers; the call itself is recorded once, outside
//     resilience (http.client.request.duration and the call's span), by
//     the rule NewServer and Dial follow (see WithTracerProvider);
//   - balancing over the cluster's endpoints, then mTLS.
//
// WithoutTelemetry removes both telemetry stages. It is safe for
// concurrent use.
type HTTPTransport struct {
	dp  *httpclient.Transport
	tel *meshTelemetry
}

// NewHTTPTransport returns the mesh's HTTP transport (see HTTPTransport).
// It does not block: a service's endpoints are looked up on its first
// request, which waits for them within the request's context. Close it
// when done.
func NewHTTPTransport(opts ...DialOption) (*HTTPTransport, error) {
	if err := checkScope(forHTTPClient, opts); err != nil {
		return nil, err
	}
	var cfg dialConfig
	for _, o := range opts {
		o.applyDial(&cfg)
	}
	if err := cfg.xds.controlPlaneErr; err != nil {
		return nil, err
	}
	if cfg.identity == nil {
		return nil, errors.New("mesh: HTTPClient has no identity: pass mesh.WithIdentity(src), with src from security.NewWorkloadAPISource, security.NewFileSource or a security.DevCA")
	}
	expect, err := cfg.expectedServer()
	if err != nil {
		return nil, fmt.Errorf("mesh: HTTPClient: %w", err)
	}
	if cfg.discovery.balancer != nil {
		for host, target := range cfg.http.targets {
			if strings.HasPrefix(target, "xds:///") {
				return nil, fmt.Errorf("mesh: HTTPClient: WithBalancer does not apply to xds:/// targets (WithHTTPTarget(%q, %q)): meshd's cluster config chooses their balancer (lb_policy); remove the option and set the balancer in meshd's config, or use a separate HTTPClient for consul:/// and static:/// hosts", host, target)
			}
		}
		if cfg.xds.controlPlane != "" {
			return nil, errors.New("mesh: HTTPClient: WithBalancer does not apply with WithControlPlane: its .mesh hosts are xds:/// targets, whose balancer meshd's cluster config chooses (lb_policy); remove the option and set the balancer in meshd's config, or use a separate HTTPClient for consul:/// and static:/// hosts")
		}
	}
	policy, err := httpBalancePolicy(cfg.discovery.balancer)
	if err != nil {
		return nil, err
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
	tel, err := newDialTelemetry(&cfg.commonConfig)
	if err != nil {
		return nil, fmt.Errorf("mesh: HTTPClient: %w", err)
	}
	rc, err := cfg.resilienceClient(tel)
	if err != nil {
		tel.close()
		return nil, fmt.Errorf("mesh: HTTPClient: %w", err)
	}
	reg := cfg.discovery.registry
	if reg == nil {
		if reg, err = discovery.New(discovery.Config{}); err != nil {
			tel.close()
			return nil, fmt.Errorf("mesh: HTTPClient: %w", err)
		}
	}
	var cpCreds credentials.TransportCredentials
	if cfg.xds.controlPlane != "" {
		if cpCreds, err = cfg.xds.credentials(cfg.identity); err != nil {
			tel.close()
			return nil, fmt.Errorf("mesh: HTTPClient: %w", err)
		}
	}
	protocols := httpProtocols(cfg.http.protocols)
	hc := httpclient.Config{
		ControlPlaneCreds: cpCreds,
		Identity:          cfg.identity,
		Expect:            expect,
		Protocols:         protocols,
		NextProtos:        nextProtos(protocols),
		Targets:           cfg.http.targets,
		ControlPlane:      cfg.xds.controlPlane,
		Registry:          reg,
		Balance:           policy,
		Wrappers:          cfg.http.wrappers,
		Logger:            tel.log(),
		OnXDS:             tel.xdsUpdate,
	}
	// The telemetry stages follow NewServer's and Dial's rule
	// (meshTelemetry.on).
	if tel.on() {
		tel.pipe.Routed = httpclient.Routed
		hc.Calls = func(next http.RoundTripper) http.RoundTripper { return tel.pipe.HTTPCalls("", next) }
		hc.Attempts = func(next http.RoundTripper) http.RoundTripper { return tel.pipe.HTTPAttempts("", next) }
	}
	if rc != nil {
		hc.Resilience = rc.RoundTripper
	}
	if rc != nil && cfg.resilience.client == nil && cfg.resilience.config == nil {
		// No policy in code: a meshd route's retry policy applies to its
		// requests.
		hc.RouteResilience = func(r xdsresource.Retry) func(http.RoundTripper) http.RoundTripper {
			p := resilience.Default()
			p.Retry.MaxAttempts, p.Retry.InitialBackoff, p.Retry.MaxBackoff = r.Attempts, r.Base, r.Max
			own, err := cfg.newResilienceClient(tel, resilience.Config{Source: resilience.SourceXDS, Default: p})
			if err != nil {
				tel.log().Warn("meshd route retry policy not applied; sent once", "retry", r, "error", err)
				return func(next http.RoundTripper) http.RoundTripper { return next }
			}
			return own.RoundTripper
		}
		// A consul:/// service gets its own client that
		// follows the service's resilience-* meta, as Dial's does.
		hc.ServiceResilience = func(s *httpclient.Service) (func(http.RoundTripper) http.RoundTripper, func()) {
			if !strings.HasPrefix(s.Target(), "consul:") {
				return nil, nil
			}
			own, err := cfg.resilienceClient(tel)
			if err == nil {
				var stop func()
				if stop, err = followConsulPolicy(reg, s.Target(), own, cfg.logger); err == nil {
					return own.RoundTripper, stop
				}
			}
			tel.log().Warn("Consul resilience meta not followed; the default policy applies", "target", s.Target(), "error", err)
			return nil, nil
		}
	}
	t := &HTTPTransport{tel: tel}
	if tel.admin != nil {
		hc.OnService = func(s *httpclient.Service) func() { return t.showOnAdmin(cfg.identity, s) }
	}
	if t.dp, err = httpclient.New(hc); err != nil {
		tel.close()
		return nil, fmt.Errorf("mesh: HTTPClient: %w", err)
	}
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

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// RoundTrip sends req to an endpoint of the service its URL host names.
func (t *HTTPTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	return t.dp.RoundTrip(req)
}

// CloseIdleConnections closes the idle connections to every endpoint.
func (t *HTTPTransport) CloseIdleConnections() { t.dp.CloseIdleConnections() }

// Close stops the discovery watches and closes idle connections; requests
// after Close fail with an error wrapping net.ErrClosed. It is safe to call
// more than once.
func (t *HTTPTransport) Close() error {
	err := t.dp.Close()
	t.tel.close()
	return err
}

// showOnAdmin lists a service on the admin endpoint until the returned
// func is called: its balancer, endpoints (with what meshd sent and the
// cluster, for xds:///, of every followed cluster) and, for xds:///, what
// its xDS stream holds and the parts of meshd's routes not applied.
func (t *HTTPTransport) showOnAdmin(src security.Source, s *httpclient.Service) func() {
	target := s.Target()
	p := admin.Provider{
		Component: admin.Component{Kind: "http-client", Name: target},
		Identity:  func() admin.Identity { return identityView(src, t.tel.self) },
		Targets: func() []admin.Target {
			eps, policy := s.Endpoints()
			tg := admin.Target{Target: target, Balancer: policy.String(), Source: scheme(target), Endpoints: []admin.Endpoint{}}
			if rec := s.XDS(); rec != nil {
				ejected := map[[2]string]bool{} // cluster, address
				s.Clusters(func(name string, ceps []httpbalance.EndpointState) {
					for _, e := range ceps {
						ejected[[2]string{name, e.Addr}] = e.Ejected
					}
				})
				for _, e := range rec.Endpoints() {
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
			return append(ps, unappliedRoutes(target, s.Routes())...)
		},
	}
	if rec := s.XDS(); rec != nil {
		p.XDS = rec.ClientConfig
	}
	return t.tel.admin.Register(p)
}

// unappliedRoutes lists the parts of meshd's routes for an xds:/// service
// that the HTTP client does not apply (retry policies, fault injection),
// one policy per route that has any.
func unappliedRoutes(target string, routes []*httpxds.Route) []admin.Policy {
	var ps []admin.Policy
	for _, r := range httpxds.Unapplied(routes) {
		name := r.Name
		if name == "" {
			name = "-"
		}
		ps = append(ps, admin.Policy{Kind: "route", Scope: target, Name: name, Source: "xds",
			Detail: "NOT APPLIED by the HTTP client: " + strings.Join(r.Unapplied, "; ") +
				" (the route's match, clusters, timeout and retry policy apply)"})
	}
	return ps
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
