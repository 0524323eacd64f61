// Package xdsname holds the xDS resource names that the mesh's xDS clients
// and meshd must agree on. It imports nothing, so the control plane can use
// the names without pulling in grpc-go's xDS client.
package xdsname

import "strings"

const (
	// ServerListenerTemplate is the name template of server-side Listener
	// resources of a server with no SPIFFE ID; %s is the listening address
	// host:port. It is grpc-go's default. Under mTLS meshd serves these to
	// no one: a server proves who it is by the identity in its listener's
	// name (ServerListenerTemplateFor).
	ServerListenerTemplate = "grpc/server?xds.resource.listening_address=%s"
	// CertProviderInstance is the certificate provider instance name that
	// meshd's clusters and server listeners refer to for mTLS.
	CertProviderInstance = "gridmesh"

	serverListenerPrefix = "grpc/server"
)

// ServerListenerTemplateFor returns the name template of the server-side
// Listener resources of a server whose SPIFFE ID is id:
// "grpc/server/<trust-domain>/<path>?xds.resource.listening_address=%s"
// (the ID without "spiffe://": grpc-go reads a name holding "://" as an
// xdstp URL). meshd sends such a listener (and the RBAC in it) only on an
// xDS stream authenticated as id. SPIFFE IDs hold no '%' or '?', so id
// needs no escaping. "" gives ServerListenerTemplate.
func ServerListenerTemplateFor(id string) string {
	if id == "" {
		return ServerListenerTemplate
	}
	return serverListenerPrefix + "/" + strings.TrimPrefix(id, "spiffe://") + "?xds.resource.listening_address=%s"
}

// IsServerListener reports whether name is a server-side Listener name
// (any identity, or none).
func IsServerListener(name string) bool {
	return strings.HasPrefix(name, serverListenerPrefix)
}

// ServerListenerOf reports whether name is a server-side Listener name for
// the server with SPIFFE ID id.
func ServerListenerOf(name, id string) bool {
	return strings.HasPrefix(id, "spiffe://") && strings.HasPrefix(name, serverListenerPrefix+"/"+strings.TrimPrefix(id, "spiffe://")+"?")
}
