package mesh

import (
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/gridmesh/gridmesh/controlplane/registration"
	"github.com/gridmesh/gridmesh/internal/meshtls"
	"github.com/gridmesh/gridmesh/internal/xdsbootstrap"
	"github.com/gridmesh/gridmesh/security"
)

// DefaultControlPlanePath is the path of the SPIFFE ID the mesh expects
// meshd to present unless WithControlPlaneID says otherwise:
// spiffe://<the workload's trust domain>/meshd.
const DefaultControlPlanePath = "/meshd"

// WithControlPlaneID makes the mesh accept only id as meshd's SPIFFE ID on
// the xDS channel and the registration API (see WithControlPlane). Default:
// spiffe://<the workload's own trust domain>/meshd, the ID `meshd dev`
// gives itself and the one to register for meshd in SPIRE. meshd must hold
// an SVID of the workload's trust domain either way.
func WithControlPlaneID(id spiffeid.ID) Option {
	return scoped{
		name:   "WithControlPlaneID",
		scope:  forNewServer | forDial | forHTTPClient,
		server: func(c *serverConfig) { c.xds.cpID = id },
		dial:   func(c *dialConfig) { c.xds.cpID = id },
	}
}

// WithInsecurePlaintextControlPlaneForLocalDebugging makes the mesh talk to
// meshd (xDS and the registration API) in plaintext, with no
// authentication either way: anyone who can stand in for meshd can then
// push routes, server identities and RBAC to this process, switching its
// authorization off. It exists for local debugging against a meshd started
// with -insecure-plaintext-xds-for-local-debugging; without it the mesh
// connects to meshd only over mTLS, and a plaintext meshd refuses mTLS
// clients as an mTLS meshd refuses plaintext ones.
func WithInsecurePlaintextControlPlaneForLocalDebugging() Option {
	return scoped{
		name:   "WithInsecurePlaintextControlPlaneForLocalDebugging",
		scope:  forNewServer | forDial | forHTTPClient,
		server: func(c *serverConfig) { c.xds.cpPlaintext = true },
		dial:   func(c *dialConfig) { c.xds.cpPlaintext = true },
	}
}

// controlPlaneID is the SPIFFE ID meshd must present.
func (x *xdsConfig) controlPlaneID(src security.Source) (spiffeid.ID, error) {
	if !x.cpID.IsZero() {
		return x.cpID, nil
	}
	own, err := security.ID(src)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("mesh: the control plane's default ID is spiffe://<own trust domain>%s: %w", DefaultControlPlanePath, err)
	}
	return spiffeid.FromPath(own.TrustDomain(), DefaultControlPlanePath)
}

// credentials returns the gRPC credentials for the connection to meshd:
// mTLS presenting src's SVID and accepting only meshd's ID, or plaintext
// under WithInsecurePlaintextControlPlaneForLocalDebugging.
func (x *xdsConfig) credentials(src security.Source) (credentials.TransportCredentials, error) {
	if x.cpPlaintext {
		return insecure.NewCredentials(), nil
	}
	id, err := x.controlPlaneID(src)
	if err != nil {
		return nil, err
	}
	return meshtls.ClientCredentials(src, spiffeid.MatchID(id)), nil
}

// bootstrap returns the bootstrap config for meshd with its channel
// credentials; release them when the channel or server is closed.
func (x *xdsConfig) bootstrap(src security.Source) (xdsbootstrap.Config, func(), error) {
	c := xdsbootstrap.Config{ServerURI: x.controlPlane}
	if x.cpPlaintext {
		c.InsecurePlaintext = true
		return c, func() {}, nil
	}
	creds, err := x.credentials(src)
	if err != nil {
		return c, nil, err
	}
	cc, release := xdsbootstrap.RegisterChannelCreds(creds)
	c.ChannelCreds = cc
	return c, release, nil
}

// registrationClient returns a client of meshd's registration API, over
// mTLS unless plaintext was asked for. Close it when done.
func (x *xdsConfig) registrationClient(src security.Source) (*registration.Client, error) {
	if x.cpPlaintext {
		return registration.NewClient(x.controlPlanes[0], x.controlPlanes[1:]...), nil
	}
	id, err := x.controlPlaneID(src)
	if err != nil {
		return nil, err
	}
	return registration.NewTLSClient(meshtls.ClientTLSConfig(src, spiffeid.MatchID(id)), x.controlPlanes[0], x.controlPlanes[1:]...), nil
}
