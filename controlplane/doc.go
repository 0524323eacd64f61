// Package controlplane is meshd as a library: an xDS control plane for
// proxyless gRPC, built on go-control-plane, that serves grpc-go's own xDS
// client the resources it expects.
//
// Inputs:
//   - a declarative config (Config, usually YAML through ParseConfig or
//     LoadConfigFile): services, their versions, routes (method/prefix and
//     header matches, weighted splits, retries, timeouts, fault injection),
//     circuit breaking, outlier detection, the load-balancing policy, and
//     authorization policies;
//   - the registration API (Server.Handler; client in package
//     registration), through which mesh servers add their endpoints with
//     their SPIFFE IDs;
//   - the Consul catalog (ConsulSource);
//   - the Kubernetes API (KubernetesSource): Services, their EndpointSlices,
//     and their pods' service accounts as the endpoints' expected SPIFFE
//     IDs, with per-service policy from the gridmesh.io/policy annotation
//     (ParsePolicyAnnotation).
//
// Registrations live in this process's memory by default, for a single
// meshd. With WithConsulRegistrations they live in the Consul catalog and
// each replica reads them back through its ConsulSource, so replicas over
// the same config and Consul serve identical snapshots and any of them
// takes registrations (see WithConsulRegistrations for the instances and
// TTL checks it writes).
//
// Security. meshd decides routes, the identities clients expect of
// servers, and RBAC, so it serves only over mTLS (WithMTLS): it presents
// its own SVID and requires a client SVID of its trust domain, on xDS and
// the registration API alike (one port; ALPN tells them apart). Plaintext
// needs WithInsecurePlaintextForLocalDebugging; with neither option Serve
// refuses to start. The registration API is authorized by identity (see
// Handler and the Rule constants): a workload registers and deregisters
// only endpoints with its own SPIFFE ID, of services the config gives no
// other identity, and never replaces another identity's registration;
// operators (MTLSConfig.Operators) may do anything and read /debug.
//
// What a client may learn: every xDS stream is served as the SPIFFE ID its
// certificate was verified as, never the node ID it sends. A server-side
// listener carries its server's SPIFFE ID in its name (ServerListenerName)
// and is sent only to a stream of that identity, so no workload can read
// another's inbound RBAC or stand in for its listener; wildcard listener
// requests and incremental xDS, which would bypass the check, are refused.
// Client listeners, routes, clusters and endpoints go to any identity of
// the trust domain: which services a workload may call is decided by the
// servers' RBAC at call time, where a denied caller gets a readable
// PERMISSION_DENIED, and hiding a service's routes from it would only turn
// that answer into "not found" while the RBAC still holds.
//
// Every input is validated; a bad one is refused with an error naming the
// file, line and field, and the last good snapshot stays in force. Errors
// quote values cut to a few dozen bytes, however long the value.
//
// A config file replaces the whole config, so a file that may be
// half-written is refused rather than read as fewer services: empty or only
// comments, over MaxConfigSize (4 MiB), not ending with a newline, missing
// the top-level key services, a key with no value, two YAML documents, or
// not parsing as a whole (see ParseConfig). Removing every service is said
// explicitly, with "services: []". Registration bodies are at most
// registration.MaxBodySize (64 KiB).
//
// Weights are relative, not percentages: a split leg gets weight/total of
// the calls (90 and 10, or 9 and 1, split 90%/10%), as grpc-go computes
// them; a route's total must be 1 to 4294967295, grpc-go's limits. See
// WeightedVersion.
// Snapshots are built deterministically (versions are content hashes), so
// replicas over the same inputs serve identical config.
//
// ADS, which grpc-go's xDS client uses, is served by a stream loop of the
// package's own rather than go-control-plane's (which still serves the
// per-type LDS, RDS, CDS and EDS services): per stream only the gRPC
// handler goroutine, reading requests, and a push goroutine while a
// response is being sent; a response is encoded once per snapshot and
// subscription and the same bytes go to every stream that wants it. A
// client that stops reading blocks only its own push goroutine: it holds
// no lock and no shared channel, so the other clients are not delayed.
// A client arriving from another replica with the version in force is not
// sent it again. bench/RESULTS.md has the figures at 10,000 clients.
//
// For a service "trading" clients dial xds:///trading and get: Listener
// "trading" (an API listener whose HttpConnectionManager points at RDS),
// RouteConfiguration "trading", Cluster "trading" and one Cluster per
// version ("trading/v2"), each with its ClusterLoadAssignment. Each endpoint
// gets a server-side Listener
// "grpc/server/<trust-domain>/<path>?xds.resource.listening_address=<host:port>"
// named after its SPIFFE ID ("grpc/server?xds.resource.listening_address=<host:port>"
// without one) for xds.NewGRPCServer, with mTLS through the "gridmesh" certificate provider
// instance when Config.MTLS is set and an RBAC filter when the service has
// authorization policies (default deny).
//
//	s := controlplane.NewServer(controlplane.WithLogger(logger))
//	defer s.Close()
//	if err := s.LoadConfigFile("meshd.yaml"); err != nil {
//		return err // names the line and field
//	}
//	go s.WatchConfigFile(ctx, "meshd.yaml", time.Second)
//	go http.Serve(regLis, s.Handler()) // registration API, /metrics, /debug
//	return s.Serve(xdsLis)             // ADS
//
// A config file:
//
//	mtls: true
//	services:
//	  - name: trading
//	    versions: [{name: v1}, {name: v2}]
//	    retry: {on: [unavailable], attempts: 2}
//	    routes:
//	      - name: canary
//	        match: {headers: [{name: x-canary, exact: "true"}]}
//	        version: v2
//	      - split: [{version: v1, weight: 90}, {version: v2, weight: 10}]
//	    authorization:
//	      - sources: ["spiffe://rec.example/frontend"]
//	        methods: ["/rec.Trading/*"]
package controlplane
