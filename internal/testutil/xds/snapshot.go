package xdstest

import (
	"context"
	"net"
	"strconv"
	"testing"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// SnapshotServer is a plain go-control-plane ADS server on loopback that
// serves every node the snapshot a test sets: resources meshd would never
// send, such as fields grpc-go ignores or resources it refuses.
type SnapshotServer struct {
	Addr  string
	cache cache.SnapshotCache
}

// oneNode gives every node the same snapshot.
type oneNode struct{}

func (oneNode) ID(*corepb.Node) string { return "all" }

// StartSnapshotServer starts a SnapshotServer, stopped at cleanup.
func StartSnapshotServer(t testing.TB) *SnapshotServer {
	t.Helper()
	snapshots := cache.NewSnapshotCache(false, oneNode{}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	srv := grpc.NewServer()
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(srv, server.NewServer(ctx, snapshots, nil))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() { cancel(); srv.Stop(); <-done })
	return &SnapshotServer{Addr: lis.Addr().String(), cache: snapshots}
}

// Set serves version of the client resources of ClientResources(name,
// addr), with cluster in place of its cluster when not nil.
func (s *SnapshotServer) Set(t testing.TB, version, name, addr string, cluster *clusterpb.Cluster) {
	t.Helper()
	l, r, c, e := ClientResources(t, name, addr)
	if cluster != nil {
		c = cluster
	}
	s.SetResources(t, version, map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: {l}, resourcev3.RouteType: {r}, resourcev3.ClusterType: {c}, resourcev3.EndpointType: {e},
	})
}

// SetResources serves version of exactly these resources.
func (s *SnapshotServer) SetResources(t testing.TB, version string, res map[resourcev3.Type][]types.Resource) {
	t.Helper()
	snap, err := cache.NewSnapshot(version, res)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cache.SetSnapshot(context.Background(), "all", snap); err != nil {
		t.Fatal(err)
	}
}

// ClientResources returns what an xds:///name channel needs: an API
// listener (RDS over ADS), its route configuration sending every call to
// the cluster name, that EDS cluster (round robin, no security config) and
// its one endpoint at addr.
func ClientResources(t testing.TB, name, addr string) (*listenerpb.Listener, *routepb.RouteConfiguration, *clusterpb.Cluster, *endpointpb.ClusterLoadAssignment) {
	t.Helper()
	ads := &corepb.ConfigSource{ConfigSourceSpecifier: &corepb.ConfigSource_Ads{Ads: &corepb.AggregatedConfigSource{}}}
	router, err := anypb.New(&routerpb.Router{})
	if err != nil {
		t.Fatal(err)
	}
	hcm, err := anypb.New(&hcmpb.HttpConnectionManager{
		RouteSpecifier: &hcmpb.HttpConnectionManager_Rds{Rds: &hcmpb.Rds{RouteConfigName: name, ConfigSource: ads}},
		HttpFilters:    []*hcmpb.HttpFilter{{Name: "router", ConfigType: &hcmpb.HttpFilter_TypedConfig{TypedConfig: router}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(portStr)
	return &listenerpb.Listener{Name: name, ApiListener: &listenerpb.ApiListener{ApiListener: hcm}},
		&routepb.RouteConfiguration{Name: name, VirtualHosts: []*routepb.VirtualHost{{
			Name: name, Domains: []string{"*"},
			Routes: []*routepb.Route{{
				Match:  &routepb.RouteMatch{PathSpecifier: &routepb.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routepb.Route_Route{Route: &routepb.RouteAction{ClusterSpecifier: &routepb.RouteAction_Cluster{Cluster: name}}},
			}},
		}}},
		&clusterpb.Cluster{
			Name:                 name,
			ClusterDiscoveryType: &clusterpb.Cluster_Type{Type: clusterpb.Cluster_EDS},
			EdsClusterConfig:     &clusterpb.Cluster_EdsClusterConfig{EdsConfig: ads},
			LbPolicy:             clusterpb.Cluster_ROUND_ROBIN,
		},
		&endpointpb.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointpb.LocalityLbEndpoints{{
			Locality:            &corepb.Locality{Region: "r"},
			LoadBalancingWeight: wrapperspb.UInt32(1), // grpc-go skips localities without a weight
			LbEndpoints: []*endpointpb.LbEndpoint{{
				HostIdentifier: &endpointpb.LbEndpoint_Endpoint{Endpoint: &endpointpb.Endpoint{Address: &corepb.Address{
					Address: &corepb.Address_SocketAddress{SocketAddress: &corepb.SocketAddress{
						Address: host, PortSpecifier: &corepb.SocketAddress_PortValue{PortValue: uint32(port)},
					}},
				}}},
				HealthStatus: corepb.HealthStatus_HEALTHY,
			}},
		}}}
}
