package controlplane

import (
	"fmt"
	"reflect"
	"strings"

	"gopkg.in/yaml.v3"
)

// PolicyAnnotation is the Service annotation that carries a Kubernetes
// service's mesh policy: YAML with the keys of a service in the config
// file, less those Kubernetes decides (name, port, spiffe_id, endpoints,
// and the endpoints of versions). For example:
//
//	metadata:
//	  annotations:
//	    gridmesh.io/policy: |
//	      lb: least_request
//	      timeout: 2s
//	      retry: {on: [unavailable], attempts: 2}
//	      versions: [{name: v1}, {name: v2}]
//	      routes:
//	        - split: [{version: v1, weight: 90}, {version: v2, weight: 10}]
//	      authorization:
//	        - sources: ["spiffe://cluster.local/ns/shop/sa/frontend"]
//
// It is validated as the config file is, with the same errors (line, field
// path, what is allowed). See ParsePolicyAnnotation and KubernetesSource.
const PolicyAnnotation = "gridmesh.io/policy"

// PortAnnotation names the Service port (its name or number) that carries
// gRPC, for a Service with several ports none of which is named grpc or
// grpc-<suffix> or has appProtocol grpc.
const PortAnnotation = "gridmesh.io/port"

// kubernetesKeys are the service keys Kubernetes decides; a policy
// annotation may not set them.
var kubernetesKeys = map[string]string{
	"name":      "the service's name is <service>.<namespace>, from the Service",
	"port":      "the port comes from the Service and its EndpointSlices (see the gridmesh.io/port annotation)",
	"spiffe_id": "each endpoint's SPIFFE ID comes from its pod's service account",
	"endpoints": "endpoints come from the Service's EndpointSlices",
}

// ParsePolicyAnnotation parses and validates the value of PolicyAnnotation
// for the mesh service name ("trading.shop"). where names the annotation
// in errors ("Service shop/trading annotation gridmesh.io/policy"). A bad
// value returns a *ConfigError whose problems give the line within the
// value, the field path (retry.attempts, routes[0].split[1].weight) and
// what is allowed, as for a config file. Authorization is accepted: it
// takes effect when the config sets mtls: true. The value need not end
// with a newline (the API server stores annotations whole, so a value
// cannot be half-written). Safe for concurrent use.
func ParsePolicyAnnotation(where, name, value string) (*Service, error) {
	refuse := func(ps ...Problem) error { return &ConfigError{File: where, Problems: ps} }
	if strings.TrimSpace(value) == "" {
		return nil, refuse(Problem{Line: 1, Message: "empty; write the policy as YAML (lb: least_request), or remove the annotation for default settings"})
	}
	data := []byte(value)
	if !strings.HasSuffix(value, "\n") {
		data = append(data, '\n')
	}
	root, problems := parseDocument(data)
	if len(problems) > 0 {
		return nil, refuse(problems...)
	}
	body := root.Content[0]
	d := &decoder{budget: 4*countNodes(root) + 1024}
	svc := &Service{}
	d.value(body, reflect.ValueOf(svc).Elem(), "", "")
	if body.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(body.Content); i += 2 {
			k := body.Content[i]
			if why, ok := kubernetesKeys[k.Value]; ok {
				d.fail(k, k.Value, "set by Kubernetes, not by the annotation (%s); remove it", why)
			}
		}
		if _, vs := mapEntry(body, "versions"); vs != nil && vs.Kind == yaml.SequenceNode {
			for i, v := range vs.Content {
				if k, _ := mapEntry(v, "endpoints"); k != nil {
					d.fail(k, fmt.Sprintf("versions[%d].endpoints", i), "set by Kubernetes, not by the annotation (an endpoint's version is its pod's version label); remove it")
				}
			}
		}
	}
	if len(d.problems) > 0 {
		sortProblems(d.problems)
		return nil, refuse(d.problems...)
	}
	svc.Name = name
	if problems := validate(&Config{MTLS: true, Services: []Service{*svc}}); len(problems) > 0 {
		for i := range problems {
			problems[i].Field = strings.TrimPrefix(strings.TrimPrefix(problems[i].Field, "services[0]"), ".")
			problems[i].Line = lineOf(root, problems[i].Field)
		}
		return nil, refuse(problems...)
	}
	return svc, nil
}
