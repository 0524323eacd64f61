package mesh

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/gridmesh/gridmesh/internal/meshtls"
	"github.com/gridmesh/gridmesh/security"
)

// Dial returns a client connection to target that presents the caller's
// SVID and verifies the server's. The server must present, in order of
// precedence: the SPIFFE ID the resolver gives for that endpoint; the ID of
// WithServerID; any ID in the trust domain of WithServerTrustDomain; or,
// with none of these, any ID in the caller's own trust domain.
//
// Targets: static:///host:port,host:port and, with WithRegistry,
// consul:///name?tag=&dc= resolve through discovery, balanced as
// WithBalancer says (round robin by default); dns:/// and xds:/// are
// grpc-go's. See the discovery package.
//
// Dial does not block: connections are made when the first call needs one,
// as with grpc.NewClient. ctx bounds nothing yet beyond the call itself.
// Close the returned connection when done.
func Dial(ctx context.Context, target string, opts ...DialOption) (*grpc.ClientConn, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("mesh: dial %s: %w", target, err)
	}
	if err := checkScope(forDial, opts); err != nil {
		return nil, err
	}
	var cfg dialConfig
	for _, o := range opts {
		o.applyDial(&cfg)
	}
	if err := cfg.xds.controlPlaneErr; err != nil {
		return nil, err
	}
	if cfg.identity == nil {
		return nil, errors.New("mesh: Dial has no identity: pass mesh.WithIdentity(src), with src from security.NewWorkloadAPISource, security.NewFileSource or a security.DevCA")
	}
	if err := cfg.checkTarget(target); err != nil {
		return nil, err
	}
	expect, err := cfg.expectedServer()
	if err != nil {
		return nil, fmt.Errorf("mesh: dial %s: %w", target, err)
	}
	reg, discoveryOpts, err := cfg.discoveryDialOptions(target)
	if err != nil {
		return nil, fmt.Errorf("mesh: dial %s: %w", target, err)
	}
	creds := meshtls.ClientCredentials(cfg.identity, expect)
	tel, err := newDialTelemetry(&cfg.commonConfig)
	if err != nil {
		return nil, fmt.Errorf("mesh: dial %s: %w", target, err)
	}
	xdsOpts, releaseXDS, err := cfg.xdsDialOptions(target, creds, tel)
	if err != nil {
		tel.close()
		return nil, fmt.Errorf("mesh: dial %s: %w", target, err)
	}
	grpcOpts := append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, discoveryOpts...)
	if xdsOpts != nil {
		grpcOpts = xdsOpts // meshd's resolver and xDS credentials, with creds as fallback
		if cfg.resilience.client == nil && cfg.resilience.config == nil {
			// No resilience in code: meshd's route retries apply.
			cfg.resilience.off, cfg.resilience.keepGRPCRetries = true, true
		}
	}
	resilienceOpts, err := cfg.resilienceDialOptions(tel, target, reg)
	if err != nil {
		tel.close()
		if releaseXDS != nil {
			releaseXDS()
		}
		return nil, fmt.Errorf("mesh: dial %s: %w", target, err)
	}
	grpcOpts = append(grpcOpts, resilienceOpts...)
	grpcOpts = append(grpcOpts, tel.attemptDialOptions(target)...) // attempts: inside resilience
	grpcOpts = append(grpcOpts, cfg.grpcOptions...)
	grpcOpts = append(tel.dialOptions(target), grpcOpts...) // telemetry interceptors outermost
	cc, err := grpc.NewClient(target, grpcOpts...)
	if err != nil {
		tel.close()
		if releaseXDS != nil {
			releaseXDS()
		}
		return nil, fmt.Errorf("mesh: dial %s: %w", target, err)
	}
	if releaseXDS != nil {
		releaseOnShutdown(cc, releaseXDS)
	}
	if xdsOpts == nil {
		tel.attachDiscovery(reg, target, cfg.discovery.balancer)
	}
	tel.registerClient(cfg.identity, target, cc)
	return cc, nil
}

// expectedServer is the check a server's SPIFFE ID must pass when the
// resolver names no ID for the endpoint: WithServerID, else
// WithServerTrustDomain, else the caller's own trust domain.
func (c *dialConfig) expectedServer() (spiffeid.Matcher, error) {
	switch {
	case !c.serverID.IsZero():
		return spiffeid.MatchID(c.serverID), nil
	case !c.serverTD.IsZero():
		return spiffeid.MatchMemberOf(c.serverTD), nil
	}
	own, err := security.ID(c.identity)
	if err != nil {
		return nil, err
	}
	return spiffeid.MatchMemberOf(own.TrustDomain()), nil
}

// checkTarget refuses the options that cannot apply to target's scheme, so
// none is silently ignored: the control plane is only for xds:/// targets,
// a Registry only for consul:/// and static:/// ones, and a balancer not for
// xds:/// ones, whose balancer meshd's cluster sets (grpc-go takes it from
// there, and code cannot override it).
func (c *dialConfig) checkTarget(target string) error {
	scheme, _, _ := strings.Cut(target, ":///")
	if scheme == target {
		scheme = ""
	}
	switch {
	case c.xds.controlPlane != "" && scheme != "xds":
		return fmt.Errorf("mesh: dial %s: WithControlPlane applies to xds:/// targets only: remove it, or dial xds:///<service>", target)
	case c.discovery.registry != nil && scheme != "consul" && scheme != "static":
		return fmt.Errorf("mesh: dial %s: WithRegistry resolves consul:/// and static:/// targets only: remove it, or dial consul:///<service>", target)
	case c.discovery.balancer != nil && scheme == "xds":
		return fmt.Errorf("mesh: dial %s: WithBalancer does not apply to xds:/// targets: meshd's cluster config chooses their balancer (lb_policy); remove the option and set the balancer in meshd's config", target)
	}
	return nil
}
