// Package endpointid carries the SPIFFE ID an endpoint must present, from the
// resolver that found the endpoint to the transport credentials that verify
// it. Resolvers (discovery) set it on each resolver.Address; the mesh's
// client credentials read it during the handshake and refuse any other ID.
package endpointid

import (
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/attributes"
	"google.golang.org/grpc/resolver"
)

type key struct{}

// Set returns addr with id recorded as the identity it must present.
func Set(addr resolver.Address, id spiffeid.ID) resolver.Address {
	addr.Attributes = addr.Attributes.WithValue(key{}, id)
	return addr
}

// FromAttributes returns the expected ID recorded in attrs, if any.
func FromAttributes(attrs *attributes.Attributes) (spiffeid.ID, bool) {
	if attrs == nil {
		return spiffeid.ID{}, false
	}
	id, ok := attrs.Value(key{}).(spiffeid.ID)
	return id, ok && !id.IsZero()
}
