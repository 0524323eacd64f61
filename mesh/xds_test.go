package mesh_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	v3statuspb "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/controlplane/registration"
	"github.com/gridmesh/gridmesh/internal/admin"
	"github.com/gridmesh/gridmesh/internal/meshtel"
	"github.com/gridmesh/gridmesh/internal/meshtls"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
	"github.com/gridmesh/gridmesh/internal/xdsstatus"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

// gatewayOnlyTrading is a meshd config: mTLS, and service trading callable
// by spiffe://example.org/gateway only.
const gatewayOnlyTrading = `mtls: true
services:
  - name: trading
    authorization:
      - name: gateway-only
        sources: [spiffe://example.org/gateway]
        methods: ["/grpc.testing.TestService/*"]
`

// TestXDSModeWithoutBootstrapFile: a mesh server and client configured only
// with meshd's address talk over mTLS, with meshd's RBAC enforced, and the
// server registers and deregisters itself.
func TestXDSModeWithoutBootstrapFile(t *testing.T) {
	cfg, err := controlplane.ParseConfig("meshd.yaml", []byte(gatewayOnlyTrading))
	if err != nil {
		t.Fatal(err)
	}
	ca := newDevCA(t, time.Hour)
	meshd := xdstest.StartMeshd(t, "", cfg, controlplane.WithMTLS(controlplane.MTLSConfig{Source: devSource(t, ca, "/meshd")}))
	svc := &echoService{}
	srv, err := mesh.NewServer(mesh.WithIdentity(devSource(t, ca, "/trading")),
		mesh.WithControlPlane(meshd.Addr), mesh.WithXDSService("trading", ""))
	if err != nil {
		t.Fatal(err)
	}
	testgrpc.RegisterTestServiceServer(srv, svc)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()
	defer func() {
		cancel()
		srv.Close()
		<-served
	}()

	call := func(caller string) (*peer.Peer, error) {
		cc, err := mesh.Dial(ctx, "xds:///trading", mesh.WithIdentity(devSource(t, ca, caller)), mesh.WithControlPlane(meshd.Addr))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		var p peer.Peer
		callCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		_, err = testgrpc.NewTestServiceClient(cc).UnaryCall(callCtx, &testpb.SimpleRequest{}, grpc.WaitForReady(true), grpc.Peer(&p))
		return &p, err
	}
	p, err := call("/gateway")
	if err != nil {
		t.Fatalf("gateway's call over xDS: %v", err)
	}
	if info, ok := p.AuthInfo.(credentials.TLSInfo); !ok || info.SPIFFEID == nil || info.SPIFFEID.String() != "spiffe://example.org/trading" {
		t.Errorf("client did not see the server's SPIFFE ID over mTLS: %#v", p.AuthInfo)
	}
	before := svc.calls.Load()
	if _, err := call("/intruder"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("intruder's call: %v, want PermissionDenied from meshd's RBAC", err)
	}
	if svc.calls.Load() != before {
		t.Error("handler ran for a call RBAC denied")
	}
}

// TestAdminShowsXDSConfigAndCSDS: for a client and a server in xDS mode the
// admin endpoint shows every resource their own xDS clients accepted from
// meshd, with versions (in /config and through CSDS), the endpoints meshd
// sent, and the config updates as events.
func TestAdminShowsXDSConfigAndCSDS(t *testing.T) {
	adm := newAdmin(t)
	meshd, ca := startXDSTrading(t, mesh.WithAdmin(adm))
	lis := meshd.lis
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cc, err := mesh.Dial(ctx, "xds:///trading", mesh.WithIdentity(devSource(t, ca, "/gateway")),
		mesh.WithControlPlane(meshd.Addr), mesh.WithAdmin(adm))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := testgrpc.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatal(err)
	}

	adminURL := "http://" + adm.Addr()
	serverListener := "grpc/server/example.org/trading?xds.resource.listening_address=" + lis.Addr().String()
	type row struct{ Scope, Type, Name, Status string }
	want := []row{
		{"spiffe://example.org/trading", "Listener", serverListener, "ACKED"},
		{"xds:///trading", "Listener", "trading", "ACKED"},
		{"xds:///trading", "RouteConfiguration", "trading", "ACKED"},
		{"xds:///trading", "Cluster", "trading", "ACKED"},
		{"xds:///trading", "ClusterLoadAssignment", "trading", "ACKED"},
	}
	var (
		cv   admin.ConfigView
		diff string
	)
	waitFor(t, func() bool {
		cv = getJSON[admin.ConfigView](t, adminURL+"/config")
		var got []row
		for _, u := range cv.Updates {
			got = append(got, row{u.Scope, u.Resource[strings.LastIndex(u.Resource, ".")+1:], u.Name, u.Status})
		}
		diff = cmp.Diff(want, got)
		return diff == ""
	})
	if diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	for _, u := range cv.Updates {
		if u.Version == "" || u.ReceivedAt.IsZero() || !u.Accepted {
			t.Errorf("update %+v: want a version, a time and accepted", u)
		}
	}

	// The same through CSDS, as grpcdebug would read it.
	acc, err := grpc.NewClient(adm.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	resp, err := v3statuspb.NewClientStatusDiscoveryServiceClient(acc).FetchClientStatus(ctx, &v3statuspb.ClientStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	scopes := map[string]int{}
	for _, c := range resp.GetConfig() {
		scopes[c.GetClientScope()] = len(c.GetGenericXdsConfigs())
		if c.GetNode().GetId() == "" {
			t.Errorf("CSDS client %s has no node", c.GetClientScope())
		}
	}
	if diff := cmp.Diff(map[string]int{"spiffe://example.org/trading": 1, "xds:///trading": 4}, scopes); diff != "" {
		t.Errorf("CSDS resources per client (-want +got):\n%s", diff)
	}

	// Endpoints: what meshd sent, with the identity its cluster expects.
	targets := getJSON[[]admin.Target](t, adminURL+"/targets?target=xds:///trading")
	wantTargets := []admin.Target{{Target: "xds:///trading", Balancer: "trading=round_robin", Source: "xds",
		Endpoints: []admin.Endpoint{{Cluster: "trading", Address: lis.Addr().String(), Identity: "spiffe://example.org/trading", State: "healthy", Weight: 1}}}}
	if diff := cmp.Diff(wantTargets, targets, cmpopts.IgnoreFields(admin.Target{}, "State", "Breaker", "Observed")); diff != "" {
		t.Errorf("targets (-want +got):\n%s", diff)
	}

	// Each accepted update is an event on the client's target.
	events := getJSON[[]meshtel.Event](t, adminURL+"/events?target=xds:///trading")
	updates := map[string]bool{}
	for _, e := range events {
		if e.Kind == meshtel.EventXDS && e.Code == "ok" {
			updates[e.Resource] = true
		}
	}
	if len(updates) != 4 {
		t.Errorf("xDS update events by type %v, want the four types", updates)
	}
}

// xdsTrading is a meshd serving the service trading (mTLS on) and a mesh
// server in xDS mode serving it, as spiffe://example.org/trading.
type xdsTrading struct {
	*xdstest.Meshd
	srv *mesh.Server
	lis net.Listener
}

// startXDSTrading starts an xdsTrading, stopped at cleanup; the server
// gets opts too.
func startXDSTrading(t testing.TB, opts ...mesh.ServerOption) (*xdsTrading, *security.DevCA) {
	t.Helper()
	cfg, err := controlplane.ParseConfig("meshd.yaml", []byte("mtls: true\nservices:\n  - name: trading\n"))
	if err != nil {
		t.Fatal(err)
	}
	ca := newDevCA(t, time.Hour)
	meshd := xdstest.StartMeshd(t, "", cfg, controlplane.WithMTLS(controlplane.MTLSConfig{Source: devSource(t, ca, "/meshd")}))
	srv, err := mesh.NewServer(append([]mesh.ServerOption{mesh.WithIdentity(devSource(t, ca, "/trading")),
		mesh.WithControlPlane(meshd.Addr), mesh.WithXDSService("trading", "")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	testgrpc.RegisterTestServiceServer(srv, &echoService{})
	lis := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() { cancel(); srv.Close(); <-served })
	return &xdsTrading{Meshd: meshd, srv: srv, lis: lis}, ca
}

// lockedBuffer is a log destination safe for concurrent writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestXDSUnsupportedFieldsAndNACKsShown: a field grpc-go ignores is shown
// and counted, not silently dropped; a cluster grpc-go refuses is logged,
// counted and shown with its reason, and calls go on with the version in
// force.
func TestXDSUnsupportedFieldsAndNACKsShown(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	addr := startServer(t, &echoService{}, mesh.WithIdentity(devSource(t, ca, "/svc")))
	cp := xdstest.StartSnapshotServer(t)
	_, _, cluster, _ := xdstest.ClientResources(t, "svc", addr)
	cluster.ConnectTimeout = durationpb.New(3 * time.Second) // grpc-go does not read it
	cp.Set(t, "1", "svc", addr, cluster)

	var logs lockedBuffer
	adm := newAdmin(t)
	mp, reader, stop := meshtel.NewManualProvider()
	t.Cleanup(stop)
	cc, err := mesh.Dial(callTimeout(t), "xds:///svc", mesh.WithIdentity(devSource(t, ca, "/caller")),
		mesh.WithControlPlane(cp.Addr), mesh.WithInsecurePlaintextControlPlaneForLocalDebugging(), mesh.WithAdmin(adm), mesh.WithMeterProvider(mp),
		mesh.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := testgrpc.NewTestServiceClient(cc)
	if _, err := client.UnaryCall(callTimeout(t), &testpb.SimpleRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatal(err)
	}
	adminURL := "http://" + adm.Addr()
	cv := getJSON[admin.ConfigView](t, adminURL+"/config")
	wantUnsupported := []admin.Unsupported{{Source: "xds", Scope: "xds:///svc", Resource: xdsstatus.ClusterType, Name: "svc", Field: "connect_timeout"}}
	if diff := cmp.Diff(wantUnsupported, cv.Unsupported, cmpopts.IgnoreFields(admin.Unsupported{}, "Seen")); diff != "" {
		t.Errorf("unsupported (-want +got):\n%s", diff)
	}

	bad := proto.Clone(cluster).(*clusterpb.Cluster)
	bad.ClusterDiscoveryType = &clusterpb.Cluster_Type{Type: clusterpb.Cluster_STATIC}
	cp.Set(t, "2", "svc", addr, bad)
	var refused admin.ConfigUpdate
	waitFor(t, func() bool {
		for _, u := range getJSON[admin.ConfigView](t, adminURL+"/config").Updates {
			if u.Resource == xdsstatus.ClusterType && u.Status == "NACKED" {
				refused = u
				return true
			}
		}
		return false
	})
	if refused.Version != "1" || !strings.HasPrefix(refused.Detail, "version 2 refused: ") || !strings.Contains(refused.Detail, `resource "svc"`) {
		t.Errorf("refused cluster shown as %+v, want version 1 in force and grpc-go's reason for version 2", refused)
	}
	if _, err := client.UnaryCall(callTimeout(t), &testpb.SimpleRequest{}); err != nil {
		t.Errorf("call after the NACK: %v", err)
	}
	for _, want := range []string{"refused config from the control plane (NACK)", "scope=xds:///svc", "version=2", "resources=[svc]"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}

	collect := func() map[string]int64 {
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		counts := map[string]int64{}
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				sum, ok := m.Data.(metricdata.Sum[int64])
				if !ok {
					continue
				}
				for _, dp := range sum.DataPoints {
					key := m.Name
					if v, ok := dp.Attributes.Value("mesh.outcome"); ok {
						key += " " + v.AsString()
					}
					if v, ok := dp.Attributes.Value("mesh.config.field"); ok {
						key += " " + v.AsString()
					}
					counts[key] += dp.Value
				}
			}
		}
		return counts
	}
	// A fixed version 3 is accepted, which also ends go-control-plane's
	// re-sending of the refused version 2.
	cp.Set(t, "3", "svc", addr, cluster)
	waitFor(t, func() bool {
		for _, u := range getJSON[admin.ConfigView](t, adminURL+"/config").Updates {
			if u.Resource == xdsstatus.ClusterType {
				return u.Status == "ACKED" && u.Version == "3" && u.Detail == ""
			}
		}
		return false
	})
	// Each response carries one resource, so once updates stop the mesh's
	// counts of responses equal grpc-go's own counts of resources.
	var counts map[string]int64
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		counts = collect()
		if counts["mesh.xds.updates nack"] >= 1 && counts["mesh.xds.updates ok"] >= 4 &&
			counts["mesh.xds.updates nack"] == counts["grpc.xds_client.resource_updates_invalid"] &&
			counts["mesh.xds.updates ok"] == counts["grpc.xds_client.resource_updates_valid"] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics %v: want NACKs and accepted updates counted as grpc-go counts them", counts)
		}
	}
	if counts["mesh.config.unsupported_fields connect_timeout"] != 1 {
		t.Errorf("metrics %v: want connect_timeout reported once", counts)
	}
	if n := strings.Count(logs.String(), "refused config from the control plane"); n != 1 {
		t.Errorf("the same refusal logged %d times, want once", n)
	}
}

// TestWithoutControlPlaneRegistration: a server that leaves its endpoint
// to meshd's other sources (here the endpoint list a Kubernetes or Consul
// source would set) never registers, yet takes its listener and RBAC from
// meshd and serves the calls routed to it; a server without the option
// registers.
func TestWithoutControlPlaneRegistration(t *testing.T) {
	cfg, err := controlplane.ParseConfig("meshd.yaml", []byte(gatewayOnlyTrading+"  - name: billing\n"))
	if err != nil {
		t.Fatal(err)
	}
	ca := newDevCA(t, time.Hour)
	meshd := xdstest.StartMeshd(t, "", cfg, controlplane.WithMTLS(controlplane.MTLSConfig{Source: devSource(t, ca, "/meshd"), Operators: []spiffeid.ID{id("/operator")}}))
	meshd.ClientTLS = meshtls.ClientTLSConfig(devSource(t, ca, "/operator"), spiffeid.MatchID(id("/meshd")))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	serve := func(service string, opts ...mesh.ServerOption) (*echoService, string) {
		svc := &echoService{}
		srv, err := mesh.NewServer(append([]mesh.ServerOption{mesh.WithIdentity(devSource(t, ca, "/"+service)),
			mesh.WithControlPlane(meshd.Addr), mesh.WithXDSService(service, "")}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		testgrpc.RegisterTestServiceServer(srv, svc)
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		sctx, stop := context.WithCancel(ctx)
		go func() { served <- srv.Serve(sctx, lis) }()
		t.Cleanup(func() {
			stop()
			srv.Close()
			<-served
		})
		return svc, lis.Addr().String()
	}
	svc, addr := serve("trading", mesh.WithoutControlPlaneRegistration())
	// What meshd serve -kubernetes would set from the Service's EndpointSlice.
	if err := meshd.Server.SetEndpoints("kubernetes", []controlplane.Endpoint{{Service: "trading", Address: addr, SPIFFEID: "spiffe://example.org/trading"}}); err != nil {
		t.Fatal(err)
	}
	cc, err := mesh.Dial(ctx, "xds:///trading", mesh.WithIdentity(devSource(t, ca, "/gateway")), mesh.WithControlPlane(meshd.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := testgrpc.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("call to the unregistered server: %v", err)
	}
	if svc.calls.Load() != 1 {
		t.Errorf("handler ran %d times, want 1", svc.calls.Load())
	}

	// The contrast: a server without the option registers. Servers
	// register as soon as they listen, so once billing is listed trading
	// would have been too.
	_, billing := serve("billing")
	var regs []registration.Registration
	xdstest.WaitFor(ctx, t, "billing registers", func() error {
		var err error
		if regs, err = meshd.Client(t).List(ctx); err != nil {
			return err
		}
		for _, r := range regs {
			if r.Service == "billing" && r.ListenAddress == billing {
				return nil
			}
		}
		return fmt.Errorf("billing (%s) not among the registrations %+v", billing, regs)
	})
	for _, r := range regs {
		if r.Service == "trading" {
			t.Errorf("trading registered (%+v) with WithoutControlPlaneRegistration", r)
		}
	}
}
