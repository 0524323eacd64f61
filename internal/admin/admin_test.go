package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	adminpb "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	v3statuspb "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/gridmesh/gridmesh/internal/admin"
	"github.com/gridmesh/gridmesh/internal/meshtel"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func listen(t *testing.T, cfg admin.Config) *admin.Server {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	s, err := admin.Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestCheckLoopback(t *testing.T) {
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:15000", true},
		{"127.0.0.2:15000", true},
		{"[::1]:15000", true},
		{"localhost:15000", true},
		{"LOCALHOST:0", true},
		{"0.0.0.0:15000", false},
		{":15000", false},
		{"[::]:15000", false},
		{"192.168.1.10:15000", false},
		{"admin.internal:15000", false},
		{"127.0.0.1", false}, // no port
	} {
		t.Run(tc.addr, func(t *testing.T) {
			err := admin.CheckLoopback(tc.addr)
			if (err == nil) != tc.ok {
				t.Fatalf("CheckLoopback(%q) = %v, want ok=%v", tc.addr, err, tc.ok)
			}
			if !tc.ok {
				if _, err := admin.Listen(admin.Config{Addr: tc.addr}); err == nil {
					t.Errorf("Listen(%q) succeeded", tc.addr)
				}
			}
		})
	}
	if err := admin.CheckLoopback("0.0.0.0:1"); !errors.Is(err, admin.ErrNotLoopback) {
		t.Errorf("error %v does not wrap ErrNotLoopback", err)
	}
}

func TestRefusesNonLoopbackCallers(t *testing.T) {
	s := listen(t, admin.Config{})
	for _, tc := range []struct {
		name, remote, host string
		want               int
	}{
		{"loopback caller", "127.0.0.1:5555", "127.0.0.1:15000", http.StatusOK},
		{"ipv6 loopback caller", "[::1]:5555", "localhost:15000", http.StatusOK},
		{"remote caller", "192.0.2.7:5555", "127.0.0.1:15000", http.StatusForbidden},
		{"remote ipv6 caller", "[2001:db8::1]:5555", "127.0.0.1:15000", http.StatusForbidden},
		{"rebinding host header", "127.0.0.1:5555", "evil.example.com", http.StatusForbidden},
		{"ipv6 host header", "127.0.0.1:5555", "[::1]:15000", http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/status", nil)
			req.RemoteAddr, req.Host = tc.remote, tc.host
			rec := httptest.NewRecorder()
			s.Handler().ServeHTTP(rec, req)
			if rec.Code != tc.want {
				t.Errorf("status %d, want %d: %s", rec.Code, tc.want, rec.Body)
			}
		})
	}
}

func TestEventsFeedDenialsAndObservedEndpoints(t *testing.T) {
	s := listen(t, admin.Config{Events: 4, Denials: 2})
	s.Register(admin.Provider{
		Component: admin.Component{Kind: "client", Name: "xds:///trading"},
		Targets: func() []admin.Target {
			return []admin.Target{{Target: "xds:///trading", State: "ready", Balancer: "round_robin"}}
		},
	})
	m := meshtel.NewRecorder(nil) // no-op instruments; events still flow to the sink
	m.OnEvent(s.Record)
	for i := range 3 {
		m.AuthzDenied("default deny", fmt.Sprintf("spiffe://example.org/c%d", i), "/rec.Trading/Buy")
	}
	m.XDSUpdate("xds:///trading", "type.googleapis.com/envoy.config.cluster.v3.Cluster", "7", false, "")
	m.XDSUpdate("xds:///trading", "type.googleapis.com/envoy.config.cluster.v3.Cluster", "8", true, "unknown lb policy")
	m.UnsupportedField("xds", "xds:///trading", "Cluster trading", "dns_lookup_family")
	for range 3 {
		m.RecordCall(meshtel.Event{Side: "client", Target: "xds:///trading", Method: "/rec.Trading/Buy",
			Endpoint: "10.0.0.1:8443", Peer: "spiffe://example.org/trading", Code: "OK"})
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st := s.Status(ctx)
	ignoreTime := cmpopts.IgnoreFields(admin.Denial{}, "Time")
	wantDenials := []admin.Denial{ // ring of 2: the oldest went
		{Caller: "spiffe://example.org/c1", Method: "/rec.Trading/Buy", Rule: "default deny"},
		{Caller: "spiffe://example.org/c2", Method: "/rec.Trading/Buy", Rule: "default deny"},
	}
	if diff := cmp.Diff(wantDenials, st.Denials, ignoreTime); diff != "" {
		t.Errorf("denials (-want +got):\n%s", diff)
	}
	var kinds []string
	for _, e := range st.Events {
		kinds = append(kinds, e.Kind)
	}
	// Traffic is a ring of 4; changes are kept apart, so the calls did not
	// push them out.
	if diff := cmp.Diff([]string{"denied", "xds_update", "xds_update", "unsupported_field", "call", "call", "call"}, kinds); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if len(st.Config) != 0 || len(st.Unsupported) != 0 {
		t.Errorf("config %v, unsupported %v: events must not make up config (it comes from the xDS clients)", st.Config, st.Unsupported)
	}
	wantTargets := []admin.Target{{Target: "xds:///trading", State: "ready", Balancer: "round_robin", Endpoints: []admin.Endpoint{},
		Observed: []admin.Endpoint{{Address: "10.0.0.1:8443", Identity: "spiffe://example.org/trading", LastCode: "OK"}}}}
	if diff := cmp.Diff(wantTargets, st.Targets, cmpopts.IgnoreFields(admin.Endpoint{}, "LastCall")); diff != "" {
		t.Errorf("targets (-want +got):\n%s", diff)
	}

	// The same over HTTP, for a filtered target.
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+s.Addr()+"/targets?target=xds:///nothing", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var none []admin.Target
	if err := json.NewDecoder(resp.Body).Decode(&none); err != nil || len(none) != 0 {
		t.Errorf("/targets?target=xds:///nothing = %v, %v; want an empty list", none, err)
	}
}

// TestConfigAndCSDSFromProviderXDSClients: a provider's xDS client status
// shows in /config (with the fields grpc-go ignores) and through the CSDS
// service on the admin port, scoped by the provider's name.
func TestConfigAndCSDSFromProviderXDSClients(t *testing.T) {
	s := listen(t, admin.Config{})
	inForce, err := anypb.New(&clusterpb.Cluster{Name: "trading", ConnectTimeout: durationpb.New(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	refused, err := anypb.New(&clusterpb.Cluster{Name: "trading", LbPolicy: clusterpb.Cluster_MAGLEV})
	if err != nil {
		t.Fatal(err)
	}
	when := time.Date(2026, 11, 27, 5, 0, 0, 0, time.UTC)
	const cdsType = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	s.Register(admin.Provider{
		Component: admin.Component{Kind: "client", Name: "xds:///trading"},
		XDS: func() *v3statuspb.ClientConfig {
			return &v3statuspb.ClientConfig{GenericXdsConfigs: []*v3statuspb.ClientConfig_GenericXdsConfig{
				{TypeUrl: cdsType, Name: "trading", VersionInfo: "7", XdsConfig: inForce, LastUpdated: timestamppb.New(when),
					ClientStatus: adminpb.ClientResourceStatus_NACKED,
					ErrorState:   &adminpb.UpdateFailureState{VersionInfo: "8", Details: `resource "trading": unexpected lbPolicy MAGLEV`, FailedConfiguration: refused}},
				{TypeUrl: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment", Name: "trading", ClientStatus: adminpb.ClientResourceStatus_REQUESTED},
			}}
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st := s.Status(ctx)
	wantConfig := []admin.ConfigUpdate{
		{Source: "xds", Scope: "xds:///trading", Resource: cdsType, Name: "trading", Version: "7", Status: "NACKED", ReceivedAt: when,
			Detail: `version 8 refused: resource "trading": unexpected lbPolicy MAGLEV`},
		{Source: "xds", Scope: "xds:///trading", Resource: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment", Name: "trading", Status: "REQUESTED"},
	}
	if diff := cmp.Diff(wantConfig, st.Config); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	wantUnsupported := []admin.Unsupported{{Source: "xds", Scope: "xds:///trading", Resource: cdsType, Name: "trading", Field: "connect_timeout", Seen: when}}
	if diff := cmp.Diff(wantUnsupported, st.Unsupported); diff != "" {
		t.Errorf("unsupported (-want +got):\n%s", diff)
	}

	cc, err := grpc.NewClient(s.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	resp, err := v3statuspb.NewClientStatusDiscoveryServiceClient(cc).FetchClientStatus(ctx, &v3statuspb.ClientStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(resp.GetConfig()); n != 1 || resp.GetConfig()[0].GetClientScope() != "xds:///trading" || len(resp.GetConfig()[0].GetGenericXdsConfigs()) != 2 {
		t.Errorf("CSDS answered %v, want one client scoped xds:///trading with two resources", resp)
	}
}

func TestCloseTwice(t *testing.T) {
	s, err := admin.Listen(admin.Config{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestUnsupportedFields(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  proto.Message
		want []string
	}{
		{"cluster", &clusterpb.Cluster{
			Name:                 "trading",
			ClusterDiscoveryType: &clusterpb.Cluster_Type{Type: clusterpb.Cluster_EDS},
			EdsClusterConfig:     &clusterpb.Cluster_EdsClusterConfig{ServiceName: "trading"},
			ConnectTimeout:       durationpb.New(time.Second),
			DnsLookupFamily:      clusterpb.Cluster_V4_ONLY,
			CircuitBreakers: &clusterpb.CircuitBreakers{Thresholds: []*clusterpb.CircuitBreakers_Thresholds{
				{MaxRequests: wrapperspb.UInt32(100), MaxConnections: wrapperspb.UInt32(10)},
				{MaxConnections: wrapperspb.UInt32(20), MaxRetries: wrapperspb.UInt32(3)},
			}},
		}, []string{"circuit_breakers.thresholds.max_connections", "circuit_breakers.thresholds.max_retries", "connect_timeout", "dns_lookup_family"}},
		{"supported cluster", &clusterpb.Cluster{Name: "trading", LbPolicy: clusterpb.Cluster_RING_HASH}, nil},
		{"not an xDS resource", &clusterpb.Cluster_EdsClusterConfig{ServiceName: "x"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, admin.UnsupportedFields(tc.msg)); diff != "" {
				t.Errorf("UnsupportedFields (-want +got):\n%s", diff)
			}
		})
	}
}
