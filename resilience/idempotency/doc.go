// Package idempotency is the server side of safe retries: a gRPC unary
// interceptor and an HTTP middleware that run a keyed request once and
// return its stored result to every repeat, so that a client may retry a
// write (a trade) after a lost response without applying it twice.
//
// Clients send the key as gRPC metadata "idempotency-key" (see
// resilience.WithIdempotencyKey) or the HTTP header "Idempotency-Key": one
// value of 1 to 255 printable ASCII characters (a UUID is a good key);
// anything else is refused with INVALID_ARGUMENT / 400 before the handler.
// Keys are scoped by the caller (the mesh passes the SPIFFE ID verified at
// the handshake, never a header), so one caller's key never returns
// another's stored result.
//
//	ids := idempotency.NewServer(idempotency.NewMemoryStore(24*time.Hour), callerID)
//	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(authz, ids.UnaryServerInterceptor()))
//	mux := ids.Handler(httpMux)
//
// The result is stored after the handler returns, in a separate step; a
// crash between the handler's commit and the store's Complete leaves the key
// in flight (repeats get ABORTED / 409, never a second run) with a
// persistent Store, and forgets it with MemoryStore. A handler that needs
// exactly-once across crashes stores its result in its own transaction.
package idempotency
