package mesh

import (
	"context"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/gridmesh/gridmesh/security"
)

// WithHealthAuthorization puts the gRPC health service of NewServer under
// the server's authorizer like any other service: a caller then needs a
// rule for "/grpc.health.v1.Health/*" (or for Check, Watch and List one by
// one) to probe it, and a denied probe gets PERMISSION_DENIED.
//
// Default (without this option): Check and Watch answer every caller that
// completed the mesh's mTLS handshake (a valid X.509-SVID of a trusted
// trust domain; anyone else never gets a connection) whatever the
// authorizer says, because health is probed by infrastructure identities
// (load balancers, registries, gRPC clients' own health checking) that have
// no business being in every service's rules, and a probe that fails on
// authorization would take a healthy server out of rotation. They reveal
// only the serving status of the name asked for. List, which names every
// service the server reports on, is always under the authorizer.
//
// NewHTTPServer serves no gRPC health service and refuses this option.
func WithHealthAuthorization() ServerOption {
	return serverOnly("WithHealthAuthorization", forNewServer, func(c *serverConfig) { c.healthAuthorized = true })
}

// healthAuthorizer returns authz with the health service's probes let
// through, unless WithHealthAuthorization puts them under authz.
func (c *serverConfig) healthAuthorizer(authz security.Authorizer) security.Authorizer {
	if c.healthAuthorized {
		return authz
	}
	return func(ctx context.Context, call security.Call) error {
		switch call.Method {
		case healthpb.Health_Check_FullMethodName, healthpb.Health_Watch_FullMethodName:
			return nil
		}
		return authz(ctx, call)
	}
}
