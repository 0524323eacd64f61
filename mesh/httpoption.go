package mesh

import (
	"net/http"

	"github.com/gridmesh/gridmesh/internal/httphost"
	"github.com/gridmesh/gridmesh/security"
)

// httpServerConfig is the HTTP part of serverConfig (NewHTTPServer).
type httpServerConfig struct {
	protocols *http.Protocols
	paths     security.PathPolicy // mesh/httppathoption.go
}

// httpDialConfig is the HTTP part of dialConfig (HTTPClient).
type httpDialConfig struct {
	protocols *http.Protocols
	targets   map[string]string // normalized host -> discovery target
	wrappers  []func(http.RoundTripper) http.RoundTripper
}

// WithHTTPProtocols sets the HTTP versions NewHTTPServer accepts or
// HTTPClient offers: HTTP/1.1 (p.SetHTTP1) and HTTP/2 (p.SetHTTP2), always
// over the mesh's TLS; unencrypted HTTP/2 is ignored. Default: both, with
// HTTP/2 preferred when both sides offer it.
func WithHTTPProtocols(p http.Protocols) Option {
	return scoped{
		name:   "WithHTTPProtocols",
		scope:  forNewHTTPServer | forHTTPClient,
		server: func(c *serverConfig) { c.http.protocols = &p },
		dial:   func(c *dialConfig) { c.http.protocols = &p },
	}
}

// WithHTTPTarget makes HTTPClient send requests for host (a URL host such
// as "trading.mesh" or "trading:8080", compared case-insensitively; without
// a port it matches every port) to the endpoints of a discovery target,
// e.g. "consul:///trading?tag=v2",
// "static:///10.0.0.1:8443,10.0.0.2:8443?spiffe_id=spiffe://example.org/trading"
// or, with WithControlPlane, "xds:///trading/v2". It may be given several
// times. See HTTPTransport for hosts without a target.
func WithHTTPTarget(host, target string) DialOption {
	return dialOnly("WithHTTPTarget", forHTTPClient, func(c *dialConfig) {
		if c.http.targets == nil {
			c.http.targets = map[string]string{}
		}
		c.http.targets[httphost.Normalize(host)] = target
	})
}

// WithHTTPRoundTripper wraps HTTPClient's transport in wrap, e.g. for
// request signing or header policies. Wrappers see the request as the
// application made it (URL host "trading.mesh"), outside the mesh metrics,
// the routing, the resilience policies and OpenTelemetry: the request a
// wrapper passes on is the one routed (a header it adds can select a meshd
// route), once, and retried. The first given is the outermost.
func WithHTTPRoundTripper(wrap func(next http.RoundTripper) http.RoundTripper) DialOption {
	return dialOnly("WithHTTPRoundTripper", forHTTPClient, func(c *dialConfig) { c.http.wrappers = append(c.http.wrappers, wrap) })
}
