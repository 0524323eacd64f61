package admin

import (
	"sort"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// supported lists, per xDS resource message, the top-level fields grpc-go's
// xDS client reads (internal/xds/xdsclient/xdsresource, grpc-go v1.85).
// Every other field that is set is accepted and silently ignored by
// grpc-go: a control plane setting it expects an effect that will not
// happen.
var supported = map[protoreflect.FullName]map[protoreflect.Name]bool{
	"envoy.config.cluster.v3.Cluster": set("name", "type", "cluster_type", "eds_cluster_config", "lb_policy",
		"load_balancing_policy", "ring_hash_lb_config", "least_request_lb_config", "transport_socket",
		"transport_socket_matches", "lrs_server", "lrs_report_endpoint_metrics", "circuit_breakers",
		"outlier_detection", "metadata", "load_assignment"),
	"envoy.config.cluster.v3.CircuitBreakers.Thresholds": set("priority", "max_requests"),
	"envoy.config.endpoint.v3.ClusterLoadAssignment":     set("cluster_name", "endpoints", "policy"),
	"envoy.config.listener.v3.Listener": set("name", "api_listener", "address", "filter_chains",
		"default_filter_chain", "use_original_dst"),
	"envoy.config.route.v3.RouteConfiguration": set("name", "virtual_hosts", "cluster_specifier_plugins"),
}

func set(names ...protoreflect.Name) map[protoreflect.Name]bool {
	m := map[protoreflect.Name]bool{}
	for _, n := range names {
		m[n] = true
	}
	return m
}

// UnsupportedFields returns the paths of the fields set in an xDS resource
// (Cluster, ClusterLoadAssignment, Listener, RouteConfiguration) that
// grpc-go's xDS client does not act on, e.g. "connect_timeout" or
// "circuit_breakers.thresholds.max_connections". It checks the top level of
// each resource and the circuit breaker thresholds; it does not claim
// that fields below that level are all supported. Nil for other messages.
func UnsupportedFields(m proto.Message) []string {
	var out []string
	walk(m.ProtoReflect(), "", &out)
	sort.Strings(out)
	return out
}

func walk(m protoreflect.Message, prefix string, out *[]string) {
	allowed, known := supported[m.Descriptor().FullName()]
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		path := prefix + string(fd.Name())
		if known && !allowed[fd.Name()] {
			*out = append(*out, path)
			return true
		}
		if fd.Kind() != protoreflect.MessageKind {
			return true
		}
		// Descend only where the table says something about the child.
		switch {
		case fd.IsList():
			l := v.List()
			seen := map[string]bool{}
			for i := 0; i < l.Len(); i++ {
				var sub []string
				walk(l.Get(i).Message(), path+".", &sub)
				for _, s := range sub {
					if !seen[s] {
						seen[s] = true
						*out = append(*out, s)
					}
				}
			}
		case !fd.IsMap():
			walk(v.Message(), path+".", out)
		}
		return true
	})
}
