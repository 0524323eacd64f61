// Package resilience makes calls succeed through failures without turning
// one failure into a storm or a trade into two. It applies retries with
// backoff and a budget, a circuit breaker, timeouts, a bulkhead, a rate
// limiter and hedging to gRPC calls (client interceptors) and HTTP requests
// (a RoundTripper), built on failsafe-go's policies. Its server side,
// package idempotency, makes keyed writes safe to retry.
//
//	rc, err := resilience.NewClient(resilience.DefaultConfig(),
//		resilience.WithObserver(resilience.Observer{OnRetry: countRetry}))
//	conn, err := grpc.NewClient(target,
//		grpc.WithDisableRetry(), // ours, not grpc-go's (transparent retries stay)
//		grpc.WithChainUnaryInterceptor(rc.UnaryClientInterceptor()),
//		grpc.WithChainStreamInterceptor(rc.StreamClientInterceptor()))
//	httpClient := &http.Client{Transport: rc.RoundTripper(transport)}
//
// # When a call is retried
//
// What may be retried depends on whether the server may have seen the call
// and whether a repeat is harmless:
//
//   - Any call, writes included, is retried when it provably never reached
//     a server. For gRPC: UNAVAILABLE from an attempt that never got a
//     transport stream (no peer recorded: the picker failed it, e.g. every
//     connection refused). grpc-go already retries, transparently, streams
//     refused before processing (REFUSED_STREAM, GOAWAY). For HTTP: a dial
//     error, or a transport error marked NotSentError (the mesh's HTTP
//     client marks refused connections, failed handshakes and HTTP/2
//     streams the server refused or never processed, so the retry is its
//     failover to another endpoint). UNAVAILABLE or EOF after a stream
//     was sent proves nothing: the server may have committed and lost the
//     response.
//   - A call whose method is declared idempotent is also retried after it
//     may have reached the server: on UNAVAILABLE, on its per-try timeout,
//     and for HTTP on transport errors and 502, 503, 504, 429. Methods are
//     declared by the proto option idempotency_level (IDEMPOTENT or
//     NO_SIDE_EFFECTS, read from the registered descriptor), by
//     MethodPolicy.Idempotency, or for HTTP by a safe method (GET, HEAD,
//     OPTIONS, TRACE).
//   - A call carrying an idempotency key (WithIdempotencyKey, or the
//     "Idempotency-Key" header) is retried like an idempotent one, and also
//     on ABORTED / 409, which the idempotency middleware returns while the
//     first copy is still in flight.
//   - Nothing else. In particular no 5xx is retried for a POST without a
//     key, DEADLINE_EXCEEDED is retried only when it is the per-try timeout
//     (never the call's own deadline), and every retry waits an exponential
//     backoff with jitter: there is no retry without a delay.
//
// Retries and hedges draw on a per-destination budget (default 20% of calls
// plus 10/s over 10s); a denied retry returns the real error. Calls refused
// locally by an open breaker, a full bulkhead or the rate limit fail with a
// *RejectedError and are not retried.
//
// Hedging (off by default) sends a second copy of a slow call, only for
// NO_SIDE_EFFECTS methods and safe HTTP methods, never for writes, keyed or
// not. The first good answer wins; the others are canceled, and the call
// returns only after they have ended.
//
// # Configuration
//
// Default returns safe defaults; Config overrides them per destination and
// Policy.Methods per method. Config.Source records whether the policy came
// from code, xDS or Consul, and Describe shows the effective policy for
// the debug endpoint.
package resilience
