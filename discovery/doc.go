// Package discovery finds service endpoints, registers services and reads
// Consul intentions, for gridmesh's gRPC and HTTP clients and servers.
//
// Targets:
//
//	consul:///trading?tag=v2&dc=eu1   passing instances from Consul's health endpoint
//	static:///10.0.0.1:8443,10.0.0.2:8443
//
// dns:/// and xds:/// stay grpc-go's. A Registry watches a target with
// Consul blocking queries, so changes arrive within a round trip of the
// change; while Consul is unreachable it keeps the last endpoints and
// retries with backoff. Each endpoint carries the SPIFFE ID it must
// present: the instance's spiffe_id meta, else spiffe://<trust
// domain>/service/<name> (ServiceID).
//
// gRPC uses the Registry through ResolverBuilders and a Balancer's service
// config; other clients use Watch directly:
//
//	reg, err := discovery.New(discovery.Config{Consul: consulClient, TrustDomain: td},
//		discovery.WithEvents(onEvent))
//	opts, err := reg.DialOptions(discovery.Balancer{Policy: discovery.RingHash, HashHeader: "x-market-id"})
//	conn, err := grpc.NewClient("consul:///trading", append(opts, creds)...)
//
//	w, err := reg.Watch("consul:///trading", nil) // an HTTP client: w.Next() per request
//
// Servers register themselves and enforce intentions:
//
//	r, err := reg.Register(ctx, discovery.Service{Name: "trading", Address: host, Port: port})
//	defer r.Close()        // deregisters; r.Drain(ctx) first marks it failing
//	in, err := reg.WatchIntentions(ctx, discovery.IntentionsConfig{Service: "trading"})
//	ok, rule := in.Authorize(ctx, callerID, method)
//
// The package never logs unless given WithLogger; it reports through
// WithEvents.
package discovery
