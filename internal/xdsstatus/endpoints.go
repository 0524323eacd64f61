package xdsstatus

import (
	"slices"
	"strings"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"

	"github.com/gridmesh/gridmesh/internal/xdsresource"
)

// Endpoint is one endpoint of a cluster the client accepted.
type Endpoint struct {
	Cluster string
	Address string // host:port
	Weight  uint32 // 1 when the control plane sent none
	// Health is the endpoint's health status in lower case: "unknown",
	// "healthy", "unhealthy", "draining", ...
	Health string
	// IDs are the SPIFFE IDs the cluster's mTLS accepts from its
	// endpoints (subject alternative names): the ID for an exact matcher,
	// "prefix spiffe://..." and the like for others (SAN.String); empty
	// when it sends none.
	IDs []string
}

// Endpoints returns the endpoints of the clusters the client accepted,
// sorted by cluster and address: what the control plane told this client,
// not where calls went.
func (r *Recorder) Endpoints() []Endpoint {
	assignments := map[string]*endpointpb.ClusterLoadAssignment{}
	for _, m := range r.Accepted(EndpointType) {
		cla := m.(*endpointpb.ClusterLoadAssignment)
		assignments[cla.GetClusterName()] = cla
	}
	var out []Endpoint
	for _, m := range r.Accepted(ClusterType) {
		c := m.(*clusterpb.Cluster)
		cla := assignments[xdsresource.EDSServiceName(c)]
		if cla == nil {
			continue
		}
		ids := clusterIDs(c)
		for _, loc := range cla.GetEndpoints() {
			for _, lb := range loc.GetLbEndpoints() {
				addr, w, ok := xdsresource.Endpoint(lb)
				if !ok {
					continue
				}
				out = append(out, Endpoint{
					Cluster: c.GetName(),
					Address: addr,
					Weight:  w,
					Health:  strings.ToLower(lb.GetHealthStatus().String()),
					IDs:     ids,
				})
			}
		}
	}
	slices.SortFunc(out, func(a, b Endpoint) int {
		if c := strings.Compare(a.Cluster, b.Cluster); c != 0 {
			return c
		}
		return strings.Compare(a.Address, b.Address)
	})
	return out
}

// clusterIDs describes the SAN matchers of the cluster's upstream TLS
// context (xdsresource.ClusterSANs): the ID itself for an exact matcher.
func clusterIDs(c *clusterpb.Cluster) []string {
	sans, err := xdsresource.ClusterSANs(c)
	if err != nil {
		return []string{"invalid: " + err.Error()}
	}
	var ids []string
	for _, s := range sans {
		ids = append(ids, s.String())
	}
	return ids
}

// Cluster is what the client applies of one cluster it accepted.
type Cluster struct {
	Name string
	// Balancer is "round_robin", "least_request", "ring_hash", or the
	// type of the first load_balancing_policy entry when the cluster uses
	// that field.
	Balancer string
	// MaxRequests is the circuit breaker's limit on concurrent requests;
	// grpc-go applies 1024 when the cluster sets none (MaxRequestsSet false).
	MaxRequests    uint32
	MaxRequestsSet bool
	// OutlierDetection says the cluster ejects failing endpoints.
	OutlierDetection bool
}

// Clusters returns the clusters the client accepted, sorted by name.
func (r *Recorder) Clusters() []Cluster {
	var out []Cluster
	for _, m := range r.Accepted(ClusterType) {
		c := m.(*clusterpb.Cluster)
		cl := Cluster{Name: c.GetName(), Balancer: strings.ToLower(c.GetLbPolicy().String()), MaxRequests: 1024,
			OutlierDetection: c.GetOutlierDetection() != nil}
		if ps := c.GetLoadBalancingPolicy().GetPolicies(); len(ps) > 0 {
			t := ps[0].GetTypedExtensionConfig().GetTypedConfig().GetTypeUrl()
			cl.Balancer = t[strings.LastIndex(t, "/")+1:]
		}
		for _, th := range c.GetCircuitBreakers().GetThresholds() {
			// grpc-go reads the DEFAULT priority only.
			if th.GetPriority() == corepb.RoutingPriority_DEFAULT && th.GetMaxRequests() != nil {
				cl.MaxRequests, cl.MaxRequestsSet = th.GetMaxRequests().GetValue(), true
			}
		}
		out = append(out, cl)
	}
	slices.SortFunc(out, func(a, b Cluster) int { return strings.Compare(a.Name, b.Name) })
	return out
}
