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
//	srv, err := mesh.NewServer(mesh.WithIdentity(src), mesh.WithAuthorizer(security.Rules(
//		security.Allow("gateway-places-orders", security.ExactID(gatewayID), recpb.Trading_PlaceOrder_FullMethodName),
//	)))
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
//   - Client: telemetry (one count and one latency per call, outside the
//     retries), resilience (timeout, retries with a budget, circuit breaker;
//     a call is resent only when it is safe: never sent, idempotent, or
//     carrying an idempotency key), balancing over the endpoints discovery
//     or xDS gives, then mTLS that presents the caller's SVID and accepts
//     only the server identity expected for that endpoint.
//   - Server: mTLS that accepts only SVIDs of a trusted trust domain (a bad
//     certificate is refused before any handler runs), telemetry,
//     authorization on the caller's SPIFFE ID and the method (gRPC) or the
//     method, Host and normalized path (HTTP), then idempotency, then the
//     handler.
//
// # Where settings come from
//
// Code, meshd's xDS and Consul can each say how a target is called. One rule
// holds for both protocols: a config source wins over code where it speaks
// (meshd's routes and clusters for xds:/// targets, a Consul service's
// resilience-* meta for consul:/// targets), and code wins over the mesh's
// defaults. An option that a config source always overrides for the given
// target is refused by the constructor, with an error that names it.
package mesh
