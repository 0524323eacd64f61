package xdsbootstrap

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"

	"google.golang.org/grpc/resolver"
)

// ReplicasScheme is the gRPC resolver scheme of a target naming several
// control-plane replicas: "gridmesh-replicas:///10.0.0.1:15010,10.0.0.2:15010".
// It is registered with grpc-go when this package is imported.
const ReplicasScheme = "gridmesh-replicas"

func init() { resolver.Register(replicasBuilder{}) }

// ReplicasTarget returns the gRPC target for the control-plane replicas at
// addrs, for Config.ServerURI and any grpc.NewClient: the one address as
// it is (host:port or a gRPC target such as dns:///meshd:15010, whose
// records grpc-go dials in turn), or for several host:port addresses a
// ReplicasScheme target. A channel to it connects to one replica (in an
// order shuffled per channel, so a fleet spreads over the replicas) and,
// when that one fails, to the next that answers; an xDS client's ADS
// stream restarts there and subscribes again.
//
// Why not the bootstrap's list of xds_servers: grpc-go (gRFC A71) falls
// back to a later server only while a watched resource has not been
// received, so a client that has its config stays with a dead primary
// and gets no updates until it returns.
func ReplicasTarget(addrs []string) (string, error) {
	switch len(addrs) {
	case 0:
		return "", fmt.Errorf("xdsbootstrap: no control plane address; name one, like 127.0.0.1:15010")
	case 1:
		return addrs[0], nil
	}
	seen := map[string]bool{}
	for i, a := range addrs {
		if err := checkHostPort(a); err != nil {
			return "", fmt.Errorf("xdsbootstrap: control plane address %d of %d, %q: %w; with several replicas each is host:port (for one DNS name with a record per replica, pass only dns:///meshd:15010)", i+1, len(addrs), a, err)
		}
		if seen[a] {
			return "", fmt.Errorf("xdsbootstrap: control plane address %q is given twice; name each replica once", a)
		}
		seen[a] = true
	}
	return ReplicasScheme + ":///" + strings.Join(addrs, ","), nil
}

func checkHostPort(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return err
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q is not 1-65535", port)
	}
	if host == "" || strings.ContainsAny(host, ",/") {
		return fmt.Errorf("host %q is not a host name or IP address", host)
	}
	return nil
}

type replicasBuilder struct{}

func (replicasBuilder) Scheme() string { return ReplicasScheme }

// Build resolves a ReplicasScheme target to its addresses, shuffled, once:
// the list is static.
func (replicasBuilder) Build(t resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	list := strings.Split(t.Endpoint(), ",")
	addrs := make([]resolver.Address, 0, len(list))
	for _, a := range list {
		if err := checkHostPort(a); err != nil {
			return nil, fmt.Errorf("xdsbootstrap: %s target %q: address %q: %w", ReplicasScheme, t.String(), a, err)
		}
		addrs = append(addrs, resolver.Address{Addr: a})
	}
	rand.Shuffle(len(addrs), func(i, j int) { addrs[i], addrs[j] = addrs[j], addrs[i] })
	if err := cc.UpdateState(resolver.State{Addresses: addrs}); err != nil {
		return nil, fmt.Errorf("xdsbootstrap: %s target %q: %w", ReplicasScheme, t.String(), err)
	}
	return staticResolver{}, nil
}

type staticResolver struct{}

func (staticResolver) ResolveNow(resolver.ResolveNowOptions) {}
func (staticResolver) Close()                                {}
