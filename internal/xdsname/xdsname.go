// Package xdsname holds the xDS resource names that the mesh's xDS clients
// and meshd must agree on. It imports nothing, so the control plane can use
// the names without pulling in grpc-go's xDS client.
package xdsname

const (
	// ServerListenerTemplate is the name template of server-side Listener
	// resources; %s is the listening address host:port. It is grpc-go's
	// default, and meshd names server listeners with it.
	ServerListenerTemplate = "grpc/server?xds.resource.listening_address=%s"
	// CertProviderInstance is the certificate provider instance name that
	// meshd's clusters and server listeners refer to for mTLS.
	CertProviderInstance = "gridmesh"
)
