// Package mesh puts a gRPC or net/http service inside the mesh, with no
// sidecar: SPIFFE mTLS, authorization by workload identity, discovery,
// client-side balancing, retries and circuit breaking, and OpenTelemetry,
// all in process.
//
// A server:
//
//	src, err := security.NewWorkloadAPISource(ctx, security.WorkloadAPIConfig{})
//	if err != nil {
//		return err
//	}
//	defer src.Close()
//	authz, err := security.Rules(
//		security.Allow("gateway-places-orders", spiffeid.MatchID(gatewayID), recpb.Trading_PlaceOrder_FullMethodName),
//	)
//	if err != nil {
//		return err
//	}
//	srv, err := mesh.NewServer(mesh.WithIdentity(src), mesh.WithAuthorizer(authz))
//	if err != nil {
//		return err
//	}
//	recpb.RegisterTradingServer(srv, trading)
//	err = srv.Serve(ctx, lis) // drains in-flight calls when ctx ends
//
// A client:
//
//	cc, err := mesh.Dial(ctx, "xds:///trading", mesh.WithIdentity(src), mesh.WithControlPlane("127.0.0.1:15010"))
//	if err != nil {
//		return err
//	}
//	defer cc.Close()
//	reply, err := recpb.NewTradingClient(cc).PlaceOrder(ctx, req)
//
// NewHTTPServer and HTTPClient give net/http the same.
//
// # One pipeline for both protocols
//
// Every call passes the same stages in the same order, on gRPC and HTTP:
//
//   - Client: call telemetry (one count and one latency per call, outside
//     the retries; the call's span, if sampled), resilience (timeout,
//     retries with a budget, circuit breaker; a call is resent only when it
//     is safe: never sent, idempotent, or carrying an idempotency key),
//     attempt telemetry (each attempt counted; a span per attempt of a
//     sampled call, whose W3C context the server receives), balancing over
//     the endpoints discovery or xDS gives, then mTLS that presents the
//     caller's SVID and accepts only the server identity expected for that
//     endpoint.
//   - Server: mTLS that accepts only SVIDs of a trusted trust domain (a bad
//     certificate is refused before any handler runs), telemetry,
//     authorization on the caller's SPIFFE ID and the method (gRPC) or the
//     method, Host and normalized path (HTTP), then idempotency, then the
//     handler.
//
// # Where settings come from
//
// Code, meshd's xDS and Consul can each say how a target is called. One rule
// holds for both protocols: an option given in code wins over the config
// source (meshd's routes and clusters for xds:/// targets, a Consul
// service's resilience-* meta for consul:/// targets), and the config source
// wins over the mesh's defaults. So WithResilience or WithResiliencePolicy
// replaces meshd's route retries for an xds:/// target, and a Consul
// service's meta for a consul:/// one; without them, Dial and HTTPClient
// alike apply the route's retry policy and follow the service's meta
// (TestBothProtocolsBehaveAlike, TestHTTPClientAppliesMeshdRouteRetries).
// What may be retried is not configurable: a request is retried only when
// it is idempotent, carries an Idempotency-Key, or never reached the
// server. One difference remains, from the transports: an xds:/// route
// with no retry policy gets no retries from grpc-go beyond its transparent
// retry of calls that never left the client, while HTTPClient, whose
// net/http has no such retry, keeps the mesh's default policy there. Where code cannot win, the
// constructor refuses the option with an error that names it: WithBalancer
// for xds:/// targets (grpc-go takes the balancer from meshd's cluster).
// Likewise an option that does not apply to a constructor (a gRPC option
// passed to NewHTTPServer, WithControlPlane for a static:/// target) is an
// error, never silently ignored.
package mesh
