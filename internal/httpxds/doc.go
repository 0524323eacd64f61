// Package httpxds is the mesh HTTP client's small xDS client. Over one ADS
// stream to meshd it follows a service's listener and its route
// configuration (LDS, RDS), every cluster those routes name plus the
// service's own cluster (CDS: the load-balancing policy and the SPIFFE IDs
// the cluster's endpoints may present) and each cluster's endpoints (EDS).
//
// Of the routes the client applies the match (path prefix, exact path or
// regex, header matchers, runtime fraction; grpc-go's semantics), the
// clusters with their weights and the timeout (max_stream_duration): see
// Route and Find. The virtual host is the one whose domains best match
// Config.Listener, as grpc-go picks it by the target's name; routes with
// query parameter matchers are skipped, as grpc-go does. It does not apply their retry policies and fault
// injection (Route.Unapplied lists them), the listener's default
// max_stream_duration, nor per-cluster circuit breakers and outlier
// detection. A route table takes effect once every cluster it
// names has its cluster and endpoints, so a request never goes to a
// cluster the client does not know yet; until then the previous table
// stays, and before any (no Config.Listener, meshd has no listener for the
// service, or its routes have not come yet) every request goes to
// Config.Cluster.
//
// While meshd is unreachable the watch keeps its last update and reconnects
// with backoff; a response it cannot use is NACKed and the last good update
// stays in force.
//
//	w, err := httpxds.Start(httpxds.Config{ServerURI: meshd, Cluster: "trading", Listener: "trading"}, onUpdate)
//	...
//	u, err := w.Wait(ctx)
//	cluster := "trading"
//	if u.Routes != nil {
//		r := httpxds.Find(u.Routes, req.URL.Path, req.Header) // nil: no route matches, fail
//		cluster = r.Pick()                                     // by the route's weights
//	}
package httpxds
