package mesh

import (
	"net/http"

	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/security"
)

// httpServerConfig is the HTTP part of serverConfig (NewHTTPServer).
type httpServerConfig struct {
	protocols *http.Protocols
}

// httpDialConfig is the HTTP part of dialConfig (HTTPClient).
type httpDialConfig struct {
	protocols *http.Protocols
	registry  *discovery.Registry
	targets   map[string]string // normalized host -> discovery target
	balancer  discovery.Balancer
	wrappers  []func(http.RoundTripper) http.RoundTripper
	xds       string // meshd's xDS address for xds:/// targets
	policySet bool   // WithHTTPBalancer was given
}

type httpProtocolsOption http.Protocols

func (o httpProtocolsOption) applyServer(c *serverConfig) {
	p := http.Protocols(o)
	c.http.protocols = &p
}

func (o httpProtocolsOption) applyDial(c *dialConfig) {
	p := http.Protocols(o)
	c.http.protocols = &p
}

// WithHTTPProtocols sets the HTTP versions NewHTTPServer accepts or
// HTTPClient offers: HTTP/1.1 (p.SetHTTP1) and HTTP/2 (p.SetHTTP2), always
// over the mesh's TLS; unencrypted HTTP/2 is ignored. Default: both, with
// HTTP/2 preferred when both sides offer it.
func WithHTTPProtocols(p http.Protocols) Option { return httpProtocolsOption(p) }

// WithRegistry sets the discovery Registry through which Dial and
// HTTPClient find the endpoints of consul:/// and static:/// targets.
// Default: a Registry without Consul, which serves static:/// targets only.
// The mesh does not close it (a Registry starts nothing of its own).
func WithRegistry(reg *discovery.Registry) DialOption {
	return dialOption(func(c *dialConfig) { c.http.registry = reg })
}

// WithHTTPTarget makes HTTPClient send requests for host (a URL host such
// as "trading.mesh" or "trading:8080", compared case-insensitively; without
// a port it matches every port) to the endpoints of a discovery target,
// e.g. "consul:///trading?tag=v2" or
// "static:///10.0.0.1:8443,10.0.0.2:8443?spiffe_id=spiffe://example.org/trading".
// It may be given several times. See HTTPClient for hosts without a target.
func WithHTTPTarget(host, target string) DialOption {
	return dialOption(func(c *dialConfig) {
		if c.http.targets == nil {
			c.http.targets = map[string]string{}
		}
		c.http.targets[security.NormalizeHost(host)] = target
	})
}

// WithHTTPBalancer sets how HTTPClient spreads requests over a service's
// endpoints. Supported: discovery.RoundRobin (the default),
// discovery.LeastRequest (with ChoiceCount) and discovery.PickFirst; other
// policies and the Outlier field make HTTPClient fail with an error that
// says so. Independently of it, an endpoint that cannot be connected to is
// skipped for 1s, doubling up to 30s while it keeps failing, and the
// request goes to another endpoint.
func WithHTTPBalancer(b discovery.Balancer) DialOption {
	return dialOption(func(c *dialConfig) { c.http.balancer, c.http.policySet = b, true })
}

// WithHTTPXDS makes HTTPClient follow xds:///<cluster> targets through
// meshd's xDS server at serverURI (host:port, plaintext, as for gRPC's
// xDS bootstrap), and makes "<name>.mesh" hosts without a WithHTTPTarget
// mean xds:///<name> instead of consul:///<name>. From meshd the client
// takes the cluster's endpoints (EDS), its load-balancing policy (CDS
// lb_policy: round robin or least request; ring hash falls back to round
// robin) unless WithHTTPBalancer is given, and the SPIFFE IDs its mTLS
// context accepts (CDS subject alternative names). It honours nothing of
// meshd's listeners and routes (no weighted splits, header routes, retries,
// timeouts or fault injection), nor its circuit breakers and outlier
// detection: use version clusters ("xds:///trading/v2") and the resilience
// round tripper for those.
func WithHTTPXDS(serverURI string) DialOption {
	return dialOption(func(c *dialConfig) { c.http.xds = serverURI })
}

// WithHTTPRoundTripper wraps HTTPClient's transport in wrap, for example
// the resilience policies: mesh.WithHTTPRoundTripper(resilienceClient.RoundTripper).
// Wrappers see the request as the application made it (URL host
// "trading.mesh"), outside the OpenTelemetry transport, so each retry is
// its own client span and a retried request may reach another endpoint.
// The first given is the outermost.
func WithHTTPRoundTripper(wrap func(next http.RoundTripper) http.RoundTripper) DialOption {
	return dialOption(func(c *dialConfig) { c.http.wrappers = append(c.http.wrappers, wrap) })
}
