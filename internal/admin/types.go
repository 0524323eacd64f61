package admin

import (
	"time"

	"github.com/gridmesh/gridmesh/internal/meshtel"
)

// Status is everything the admin endpoint knows, as GET /status returns it.
// Sections with nothing wired are empty, never made up.
type Status struct {
	Process     Process         `json:"process"`
	Components  []Component     `json:"components"`
	Identities  []Identity      `json:"identities"`
	Targets     []Target        `json:"targets"`
	Policies    []Policy        `json:"policies"`
	Config      []ConfigUpdate  `json:"config"`
	Unsupported []Unsupported   `json:"unsupported"`
	Denials     []Denial        `json:"denials"`
	Events      []meshtel.Event `json:"events"`
}

// Process describes the process the endpoint belongs to.
type Process struct {
	PID       int       `json:"pid"`
	Program   string    `json:"program"`
	GoVersion string    `json:"go_version"`
	Started   time.Time `json:"started"`
	Now       time.Time `json:"now"`
}

// Component is a mesh server or client registered with the endpoint.
type Component struct {
	Kind string `json:"kind"` // "server" or "client"
	Name string `json:"name"` // SPIFFE ID of a server, target of a client
}

// Identity is an X.509-SVID the process presents and the trust bundles it
// verifies peers with.
type Identity struct {
	SPIFFEID  string    `json:"spiffe_id"`
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"not_before"`
	Expiry    time.Time `json:"expiry"`
	Issuer    string    `json:"issuer"`
	Bundles   []Bundle  `json:"bundles"`
	Error     string    `json:"error,omitempty"` // why the SVID could not be read
}

// Bundle is the trust bundle of one trust domain.
type Bundle struct {
	TrustDomain string      `json:"trust_domain"`
	Authorities []Authority `json:"authorities"`
}

// Authority is one CA certificate of a bundle.
type Authority struct {
	Subject  string    `json:"subject"`
	NotAfter time.Time `json:"not_after"`
	SHA256   string    `json:"sha256"`
}

// Target is a destination a client dialed.
type Target struct {
	Target    string     `json:"target"`
	State     string     `json:"state"`              // channel connectivity state
	Balancer  string     `json:"balancer,omitempty"` // balancing policy, "" when not known
	Breaker   string     `json:"breaker,omitempty"`  // circuit breaker state, "" when none
	Source    string     `json:"source,omitempty"`   // where endpoints come from: "static", "consul", "xds"
	Endpoints []Endpoint `json:"endpoints"`          // from discovery, when wired
	// Observed lists the endpoints recent calls through this process
	// reached, with the SPIFFE ID each presented: what happened, beside
	// what discovery says should happen. Filled by the endpoint.
	Observed []Endpoint `json:"observed"`
}

// Endpoint is one address of a target.
type Endpoint struct {
	Cluster  string    `json:"cluster,omitempty"` // xDS cluster (service version) it belongs to
	Address  string    `json:"address"`
	Identity string    `json:"identity,omitempty"` // SPIFFE ID expected or seen
	State    string    `json:"state,omitempty"`
	Weight   uint32    `json:"weight,omitempty"`
	Ejected  bool      `json:"ejected,omitempty"`
	LastCall time.Time `json:"last_call,omitzero"` // last call seen through this endpoint
	LastCode string    `json:"last_code,omitempty"`
}

// Policy is one effective policy and where it came from.
type Policy struct {
	Kind   string `json:"kind"`   // "authz", "retry", "breaker", "timeout", ...
	Scope  string `json:"scope"`  // server SPIFFE ID or client target it applies to
	Name   string `json:"name"`   // rule or policy name
	Source string `json:"source"` // "code", "xds", "consul", "default"
	Detail string `json:"detail,omitempty"`
}

// ConfigUpdate is one resource an xDS client of the process holds.
type ConfigUpdate struct {
	Source     string    `json:"source"`   // "xds"
	Scope      string    `json:"scope"`    // the client: dial target, server SPIFFE ID, or grpc-go's process-wide client
	Resource   string    `json:"resource"` // xDS type URL
	Name       string    `json:"name"`
	Version    string    `json:"version"` // last version accepted, "" when none
	Status     string    `json:"status"`  // CSDS client status: ACKED, NACKED, REQUESTED, DOES_NOT_EXIST
	ReceivedAt time.Time `json:"received_at,omitzero"`
	Accepted   bool      `json:"accepted"`         // Status is ACKED
	Detail     string    `json:"detail,omitempty"` // the refused version and the client's reason
}

// Unsupported is a config field that was received but that the mesh does
// not act on.
type Unsupported struct {
	Source   string    `json:"source"`
	Scope    string    `json:"scope"`
	Resource string    `json:"resource"` // xDS type URL
	Name     string    `json:"name"`
	Field    string    `json:"field"`
	Seen     time.Time `json:"seen"`
}

// Denial is a call authorization refused.
type Denial struct {
	Time   time.Time `json:"time"`
	Caller string    `json:"caller"`
	Method string    `json:"method"`
	Rule   string    `json:"rule"`
}
