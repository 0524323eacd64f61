package controlplane

import "time"

// Config is meshd's declarative input: the services of the mesh, how calls
// to them are routed, and who may call them. It is usually loaded from YAML
// with [ParseConfig] or [LoadConfigFile]; the YAML keys are the yaml tags.
//
// A Config is plain data; build one in code or load it, then hand it to
// [Server.SetConfig], which validates it. Do not modify a Config after
// handing it over.
//
// A config file replaces the whole config: a service it leaves out is
// dropped from the mesh. So that a half-written file cannot take the mesh
// down, a file is refused (and a running meshd keeps its last good config)
// when it is empty or only comments, larger than [MaxConfigSize] (4 MiB),
// not ending with a newline, missing the top-level key services, holding a
// key with no value, holding several YAML documents, or not parsing as a
// whole; [ParseConfig] lists the rules. To remove every service, say so:
//
//	services: []
//
// Write files atomically where you can (write a temporary file, then
// rename it over the config); [Server.WatchConfigFile] also waits for a
// changed file to stay the same for one interval before reading it.
type Config struct {
	// MTLS turns on mutual TLS through the xDS certificate provider for every
	// cluster (client side) and every server-side listener. Clients and
	// servers must then use grpc-go's xds credentials. Default false.
	MTLS bool `yaml:"mtls"`
	// Services are the services of the mesh, each reachable as xds:///<name>.
	// Required in a file, even when empty: "services: []" removes every
	// service.
	Services []Service `yaml:"services" allowed:"services, each a mapping starting with '- name: '"`
}

// Service is one service of the mesh.
type Service struct {
	// Name is the xDS target name: clients dial xds:///<name>. Required;
	// lower-case letters, digits, '-', '.' and '_'.
	Name string `yaml:"name"`
	// Port is the port of endpoints listed without one. Optional.
	Port uint32 `yaml:"port" allowed:"a port number, 1-65535"`
	// SPIFFEID is the identity the service's statically listed endpoints
	// present; clients refuse other identities when MTLS is on. Registered
	// endpoints carry their own IDs. Optional.
	SPIFFEID string `yaml:"spiffe_id"`
	// LB is the load-balancing policy: round_robin (default), least_request
	// or ring_hash.
	LB string `yaml:"lb" allowed:"round_robin, least_request or ring_hash"`
	// HashHeader is the request header ring_hash hashes on. Empty: each
	// channel sticks to one endpoint (grpc-go's channel id). Only with
	// lb: ring_hash.
	HashHeader string `yaml:"hash_header"`
	// Endpoints are static endpoints (host:port, or host with Port) of no
	// particular version.
	Endpoints []string `yaml:"endpoints" allowed:"addresses, host:port"`
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
	Endpoints []string `yaml:"endpoints" allowed:"addresses, host:port"`
}

// Route sends the calls it matches to one version or splits them by weight.
type Route struct {
	// Name identifies the route in errors and config dumps. Optional.
	Name  string `yaml:"name"`
	Match Match  `yaml:"match"`
	// Version sends every matching call to one version. Set Version or
	// Split, not both; neither: the whole service.
	Version string `yaml:"version"`
	// Split divides matching calls between versions by weight: a version
	// gets weight/total of the calls (see WeightedVersion).
	Split []WeightedVersion `yaml:"split" allowed:"{version: <name>, weight: <n>} legs"`
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
//
// Weights are relative, not percentages: a leg gets weight/total of the
// calls, where total is the sum of the route's weights. 90 and 10 split
// calls 90%/10%, and so do 9 and 1; 1, 1 and 1 split them in thirds. This
// is what grpc-go (and Envoy, whose total_weight is deprecated) does with
// the weights meshd sends, so meshd does not ask for a sum of 100, which
// would refuse 1:1:1 and force rounding. The total must be above 0 (a
// route that routes nothing is refused) and at most 4294967295 (grpc-go
// refuses more, and would NACK the service's whole route table). A leg of
// weight 0 gets no calls but stays declared, which is how a canary is
// paused; in a file, weight must be written even when it is 0.
type WeightedVersion struct {
	Version string `yaml:"version" required:"true" allowed:"the name of one of the service's versions"`
	Weight  uint32 `yaml:"weight" required:"true" allowed:"a whole number from 0 to 4294967295, relative to the other legs' weights"`
}

// RetryPolicy retries failed calls, as grpc-go's xDS retry support does.
type RetryPolicy struct {
	// On lists the gRPC codes to retry, by grpc-go's names: unavailable,
	// cancelled, deadline-exceeded, internal, resource-exhausted.
	// Default: [unavailable].
	On []string `yaml:"on" allowed:"unavailable, cancelled, deadline-exceeded, internal or resource-exhausted"`
	// Attempts is the number of retries after the first try. Default 2.
	Attempts uint32 `yaml:"attempts" allowed:"a whole number from 0 to 10"`
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
	Percent  float64       `yaml:"percent" allowed:"a number above 0 and at most 100"`
}

// AbortFault fails Percent of calls with Code (a gRPC code name such as
// UNAVAILABLE).
type AbortFault struct {
	Code    string  `yaml:"code" allowed:"a gRPC code name like UNAVAILABLE"`
	Percent float64 `yaml:"percent" allowed:"a number above 0 and at most 100"`
}

// CircuitBreaker bounds concurrent calls from one client to the service.
type CircuitBreaker struct {
	// MaxRequests is the most calls in flight; more fail with UNAVAILABLE.
	MaxRequests uint32 `yaml:"max_requests" allowed:"a whole number from 1 to 4294967295"`
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
	MaxEjectionPercent uint32 `yaml:"max_ejection_percent" allowed:"a whole number from 0 to 100"`
	// FailurePercentThreshold ejects an endpoint whose failure percentage
	// over an interval exceeds it. Default 85.
	FailurePercentThreshold uint32 `yaml:"failure_percent_threshold" allowed:"a whole number from 0 to 100"`
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
	Sources []string `yaml:"sources" allowed:"SPIFFE IDs: spiffe://td/path, spiffe://td/path/*, spiffe://td/* or \"*\""`
	// Methods are full gRPC methods "/pkg.Service/Method", whole services
	// "/pkg.Service/*", or "*". Empty: every method.
	Methods []string `yaml:"methods" allowed:"methods: \"/pkg.Service/Method\", \"/pkg.Service/*\" or \"*\""`
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
	// Weight is the endpoint's load-balancing weight, relative to the other
	// endpoints of the service (2 gets twice the calls of 1). Default 1
	// (also for 0). The weights of a service's endpoints may add up to at
	// most 4294967295 (grpc-go's limit per locality).
	Weight uint32 `json:"weight,omitempty"`
	// Health says whether clients send the endpoint new calls. Default
	// HealthServing. See EndpointHealth.
	Health EndpointHealth `json:"health,omitempty"`
}

// EndpointHealth is the state of an endpoint as clients see it.
//
// An endpoint that is not serving stays in the snapshot: clients get it in
// EDS as DRAINING or UNHEALTHY, which grpc-go's balancers skip, so it gets
// no new calls; its server keeps its server-side Listener, so calls in
// flight finish and a server that is not ready yet still serves (Kubernetes
// probes it there before it becomes ready).
type EndpointHealth string

const (
	// HealthServing (the zero value) gets calls.
	HealthServing EndpointHealth = ""
	// HealthDraining is going away (a terminating pod): no new calls.
	HealthDraining EndpointHealth = "draining"
	// HealthUnhealthy is not ready (a pod failing its readiness probe): no
	// new calls.
	HealthUnhealthy EndpointHealth = "unhealthy"
)
