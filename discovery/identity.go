package discovery

import (
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// MetaSPIFFEID is the Consul service meta key under which an instance
// advertises the SPIFFE ID it presents. Register sets it; the consul
// resolver reads it.
const MetaSPIFFEID = "spiffe_id"

// ServiceID is the SPIFFE ID gridmesh derives for service name in trust
// domain td when an instance does not advertise one:
//
//	spiffe://<trust domain>/service/<name>
//
// It is the rule used on both sides: Register advertises it (unless told
// otherwise) and the consul resolver expects it of instances without a
// spiffe_id meta entry.
func ServiceID(td spiffeid.TrustDomain, name string) (spiffeid.ID, error) {
	id, err := spiffeid.FromSegments(td, "service", name)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("discovery: service name %q does not make a SPIFFE ID: %w", name, err)
	}
	return id, nil
}

// ServiceName returns the service name a SPIFFE ID stands for, for matching
// Consul intentions, which name services, not identities. It understands
// gridmesh's rule (spiffe://td/service/<name>) and Consul Connect's
// (spiffe://td/ns/<ns>/dc/<dc>/svc/<name>). Any other shape reports false.
func ServiceName(id spiffeid.ID) (string, bool) {
	segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	switch {
	case len(segs) == 2 && segs[0] == "service" && segs[1] != "":
		return segs[1], true
	case len(segs) == 6 && segs[0] == "ns" && segs[2] == "dc" && segs[4] == "svc" && segs[5] != "":
		return segs[5], true
	}
	return "", false
}
