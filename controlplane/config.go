package controlplane

import "time"

// Config is meshd's declarative input: the services of the mesh, how calls
// to them are routed, and who may call them. It is usually loaded from YAML
// with [ParseConfig] or [LoadConfigFile]; the YAML keys are the yaml tags.
//
// A Config is plain data; build one in code or load it, then hand it to
// [Server.SetConfig], which validates it. Do not modify a Config after
// handing it over.
type Config struct {
	// MTLS turns on mutual TLS through the xDS certificate provider for every
	// cluster (client side) and every server-side listener. Clients and
	// servers must then use grpc-go's xds credentials. Default false.
	MTLS bool `yaml:"mtls"`
	// Services are the services of the mesh, each reachable as xds:///<name>.
	Services []Service `yaml:"services"`
}

// Service is one service of the mesh.
type Service struct {
	// Name is the xDS target name: clients dial xds:///<name>. Required;
	// lower-case letters, digits, '-', '.' and '_'.
	Name string `yaml:"name"`
	// Port is the port of endpoints listed without one. Optional.
	Port uint32 `yaml:"port"`
	// SPIFFEID is the identity the service's statically listed endpoints
	// present; clients refuse other identities when MTLS is on. Registered
	// endpoints carry their own IDs. Optional.
	SPIFFEID string `yaml:"spiffe_id"`
	// LB is the load-balancing policy: round_robin (default), least_request
	// or ring_hash.
	LB string `yaml:"lb"`
	// HashHeader is the request header ring_hash hashes on. Empty: each
	// channel sticks to one endpoint (grpc-go's channel id). Only with
	// lb: ring_hash.
	HashHeader string `yaml:"hash_header"`
	// Endpoints are static endpoints (host:port, or host with Port) of no
	// particular version.
	Endpoints []string `yaml:"endpoints"`
	// Versions are named subsets (v1, v2, canary) routes can send calls to.
	Versions []Version `yaml:"versions"`
	// Routes are tried in order; the first whose match fits takes the call.
	// Calls no route matches go to every endpoint of the service with the
	// service-level Timeout and Retry.
	Routes []Route `yaml:"routes"`
	// Timeout caps each call (grpc-go max stream duration). Zero: none.
	Timeout time.Duration `yaml:"timeout"`
	// Retry is the default retry policy of the service's routes. Nil: none.
	Retry *RetryPolicy `yaml:"retry"`
	// CircuitBreaker limits concurrent calls per client. Nil: grpc-go's
	// default of 1024.
	CircuitBreaker *CircuitBreaker `yaml:"circuit_breaker"`
	// OutlierDetection ejects failing endpoints. Nil: off.
	OutlierDetection *OutlierDetection `yaml:"outlier_detection"`
	// Authorization, when non-empty, makes the service's servers
	// default-deny: a call is let through only if some policy allows it.
	Authorization []Policy `yaml:"authorization"`
}

// Version is a named subset of a service's endpoints.
type Version struct {
	// Name is referred to by routes. Required; unique in the service.
	Name string `yaml:"name"`
	// Endpoints are static endpoints of this version. Registered endpoints
	// join a version by naming it.
	Endpoints []string `yaml:"endpoints"`
}

// Route sends the calls it matches to one version or splits them by weight.
type Route struct {
	// Name identifies the route in errors and config dumps. Optional.
	Name  string `yaml:"name"`
	Match Match  `yaml:"match"`
	// Version sends every matching call to one version. Set Version or
	// Split, not both; neither: the whole service.
	Version string `yaml:"version"`
	// Split divides matching calls between versions by weight.
	Split []WeightedVersion `yaml:"split"`
	// Timeout and Retry override the service's. Fault injects failures.
	Timeout time.Duration `yaml:"timeout"`
	Retry   *RetryPolicy  `yaml:"retry"`
	Fault   *Fault        `yaml:"fault"`
}

// Match selects calls. All set fields must match; an empty Match matches
// every call.
type Match struct {
	// Method is a full gRPC method, "/pkg.Service/Method".
	Method string `yaml:"method"`
	// Prefix is a path prefix, "/pkg.Service/" for a whole service.
	Prefix  string        `yaml:"prefix"`
	Headers []HeaderMatch `yaml:"headers"`
}

// HeaderMatch matches one request metadata key. Set exactly one of Exact,
// Prefix, Regex (RE2) or Present.
type HeaderMatch struct {
	Name    string `yaml:"name"`
	Exact   string `yaml:"exact"`
	Prefix  string `yaml:"prefix"`
	Regex   string `yaml:"regex"`
	Present bool   `yaml:"present"`
	// Invert negates the match.
	Invert bool `yaml:"invert"`
}

// WeightedVersion is one leg of a weighted split.
type WeightedVersion struct {
	Version string `yaml:"version"`
	Weight  uint32 `yaml:"weight"`
}

// RetryPolicy retries failed calls, as grpc-go's xDS retry support does.
type RetryPolicy struct {
	// On lists the gRPC codes to retry, by grpc-go's names: unavailable,
	// cancelled, deadline-exceeded, internal, resource-exhausted.
	// Default: [unavailable].
	On []string `yaml:"on"`
	// Attempts is the number of retries after the first try. Default 2.
	Attempts uint32 `yaml:"attempts"`
	// BaseInterval and MaxInterval bound the backoff. Defaults 25ms and
	// 10×BaseInterval.
	BaseInterval time.Duration `yaml:"base_interval"`
	MaxInterval  time.Duration `yaml:"max_interval"`
}

// Fault injects failures into matching calls, on the client side.
type Fault struct {
	Delay *DelayFault `yaml:"delay"`
	Abort *AbortFault `yaml:"abort"`
}

// DelayFault delays Percent of calls by Duration.
type DelayFault struct {
	Duration time.Duration `yaml:"duration"`
	Percent  float64       `yaml:"percent"`
}

// AbortFault fails Percent of calls with Code (a gRPC code name such as
// UNAVAILABLE).
type AbortFault struct {
	Code    string  `yaml:"code"`
	Percent float64 `yaml:"percent"`
}

// CircuitBreaker bounds concurrent calls from one client to the service.
type CircuitBreaker struct {
	// MaxRequests is the most calls in flight; more fail with UNAVAILABLE.
	MaxRequests uint32 `yaml:"max_requests"`
}

// OutlierDetection ejects endpoints whose failure rate stands out, as
// grpc-go's outlier_detection balancer does (failure-percentage and
// success-rate algorithms; consecutive-error ejection is not supported by
// grpc-go).
type OutlierDetection struct {
	// Interval between ejection sweeps. Default 10s.
	Interval time.Duration `yaml:"interval"`
	// BaseEjectionTime is the first ejection's length. Default 30s.
	BaseEjectionTime time.Duration `yaml:"base_ejection_time"`
	// MaxEjectionPercent caps how many endpoints may be ejected. Default 10.
	MaxEjectionPercent uint32 `yaml:"max_ejection_percent"`
	// FailurePercentThreshold ejects an endpoint whose failure percentage
	// over an interval exceeds it. Default 85.
	FailurePercentThreshold uint32 `yaml:"failure_percent_threshold"`
	// MinimumHosts and RequestVolume gate the failure-percentage algorithm.
	// Defaults 5 and 50.
	MinimumHosts  uint32 `yaml:"minimum_hosts"`
	RequestVolume uint32 `yaml:"request_volume"`
}

// Policy allows callers to call methods. A service with policies denies
// every call no policy allows.
type Policy struct {
	// Name identifies the policy in config dumps.
	Name string `yaml:"name"`
	// Sources are caller SPIFFE IDs: "spiffe://td/path" exactly,
	// "spiffe://td/ns/prod/*" for spiffe://td/ns/prod and every ID under
	// it (segment boundaries, as security.PathPrefix), "spiffe://td/*" for
	// a whole trust domain, or "*" for any authenticated caller.
	Sources []string `yaml:"sources"`
	// Methods are full gRPC methods "/pkg.Service/Method", whole services
	// "/pkg.Service/*", or "*". Empty: every method.
	Methods []string `yaml:"methods"`
}

// Endpoint is one serving instance of a service, from any source.
type Endpoint struct {
	// Service and Version name what the endpoint serves; Version may be
	// empty.
	Service string `json:"service"`
	Version string `json:"version,omitempty"`
	// Address is where clients connect, host:port.
	Address string `json:"address"`
	// ListenAddress is the address the server listens on, if it differs
	// from Address (a server on 0.0.0.0:8443); it names the server-side
	// listener. Default Address.
	ListenAddress string `json:"listen_address,omitempty"`
	// SPIFFEID is the identity the endpoint presents. Optional.
	SPIFFEID string `json:"spiffe_id,omitempty"`
	// Weight is the endpoint's load-balancing weight. Default 1.
	Weight uint32 `json:"weight,omitempty"`
}
