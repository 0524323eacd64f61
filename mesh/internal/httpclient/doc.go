// Package httpclient is the mesh's HTTP client data plane: the machinery
// behind mesh.HTTPClient and mesh.NewHTTPTransport. It maps a request's
// URL host to a service, follows the service's endpoints (discovery
// targets through the shared endpoint watcher; xds:/// targets through
// meshd's listener, routes, clusters and endpoints, internal/httpxds),
// routes each request, balances it over the chosen cluster's endpoints
// (internal/httpbalance) and sends it over mTLS with the caller's SVID.
// mesh builds the Config from its options and adds nothing to a request.
//
// # The pipeline
//
// A request passes the same stages, in the same order, as a gRPC call
// through mesh.Dial. Outermost first:
//
//  1. Wrappers (Config.Wrappers, mesh.WithHTTPRoundTripper): see the
//     request as the application made it. gRPC has no equivalent stage
//     outside telemetry.
//  2. Call telemetry (Config.Calls): http.client.request.duration, one
//     call per request whatever the retries beneath, by result and the
//     identities of both sides; the call's span when sampled (decided
//     here, before anything is allocated for one). On gRPC: the mesh's
//     call interceptors, chained first.
//  3. Routing: the request's service and meshd route are looked up once,
//     and the cluster chosen once (by the route's weights); the decision
//     rides in the request's context to the stages beneath, so a retry
//     keeps it and nothing beneath looks the request up again. The
//     route's timeout (max_stream_duration) bounds everything beneath,
//     retries and the reading of the response body included. On gRPC:
//     grpc-go's config selector, once per call. A service's first
//     requests, sent before its endpoints (and meshd's routes) are known,
//     are routed by their first attempt once they are, with the same
//     request: the wait is then bounded by resilience's timeout, as
//     grpc-go's picker waits for its resolver, and the route's timeout
//     does not apply to them.
//  4. Resilience (Config.Resilience, resilience.Client.RoundTripper): the
//     only stage that retries, hedges, breaks circuits or rate-limits.
//     It retries what is safe: idempotent requests, requests with an
//     Idempotency-Key header, and any request the stages beneath prove
//     the server never saw (a *NotSentError). Its policy is chosen per
//     request, as Dial's is per target: a meshd route's retry policy
//     (Config.RouteResilience), else the service's own (Config.
//     ServiceResilience: a consul:/// service following its Consul meta),
//     else the transport's. On gRPC: the resilience interceptors, or
//     grpc-go's retries for an xds:/// target without a policy in code.
//  5. Attempt telemetry (Config.Attempts): mesh.http.client.attempts,
//     and for a sampled call a span per attempt (numbered, first, retry
//     or hedge) whose W3C context goes in the attempt's headers. On gRPC:
//     the mesh's attempt interceptors, chained right after resilience's.
//  6. Balancing: an endpoint of the chosen cluster by the cluster's
//     policy, preferring endpoints this request has not tried yet. An
//     endpoint that cannot be reached is ejected for a while and the
//     failure is returned as a *NotSentError for resilience to retry
//     elsewhere; the balancer itself never resends. On gRPC: the
//     balancer's picker.
//  7. Identity: each endpoint's connection pool dials mTLS, presenting
//     the caller's SVID and requiring the SPIFFE ID discovery names for
//     the endpoint, else the cluster's IDs from meshd (SAN matchers, read
//     as grpc-go reads them: internal/xdsresource), else Config.Expect.
//     On gRPC: the transport credentials.
//
// Authorization is the server's stage, between identity and the handler:
// the server checks the caller's verified SPIFFE ID and the request
// before anything else runs (mesh.NewHTTPServer, mesh.NewServer).
//
//	t, err := httpclient.New(httpclient.Config{Identity: src, Expect: expect, Registry: reg,
//		Resilience: rc.RoundTripper})
//	...
//	defer t.Close()
//	resp, err := (&http.Client{Transport: t}).Get("http://trading.mesh/v1/trades")
package httpclient
