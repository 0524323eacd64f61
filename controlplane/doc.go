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
//   - the Consul catalog (ConsulSource).
//
// Every input is validated; a bad one is refused with an error naming the
// file, line and field, and the last good snapshot stays in force.
// Snapshots are built deterministically (versions are content hashes), so
// replicas over the same inputs serve identical config.
//
// For a service "trading" clients dial xds:///trading and get: Listener
// "trading" (an API listener whose HttpConnectionManager points at RDS),
// RouteConfiguration "trading", Cluster "trading" and one Cluster per
// version ("trading/v2"), each with its ClusterLoadAssignment. Each endpoint
// gets a server-side Listener
// "grpc/server?xds.resource.listening_address=<host:port>" for
// xds.NewGRPCServer, with mTLS through the "gridmesh" certificate provider
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
