package mesh_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	v3statuspb "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	channelzgrpc "google.golang.org/grpc/channelz/grpc_channelz_v1"
	channelzpb "google.golang.org/grpc/channelz/grpc_channelz_v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/internal/admin"
	"github.com/gridmesh/gridmesh/internal/meshtel"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

// relayService answers UnaryCall by calling next, and reports the baggage
// member "tenant" it saw in Username when next is nil (the last hop).
type relayService struct {
	testgrpc.UnimplementedTestServiceServer
	next testgrpc.TestServiceClient
}

func (s *relayService) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	if s.next == nil {
		return &testpb.SimpleResponse{Username: baggage.FromContext(ctx).Member("tenant").Value()}, nil
	}
	return s.next.UnaryCall(ctx, req)
}

func TestTraceAcrossTwoMeshedHopsIsOneTrace(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	ca := newDevCA(t, time.Hour)

	backAddr := startRelay(t, &relayService{}, mesh.WithIdentity(devSource(t, ca, "/back")), mesh.WithTracerProvider(tp))
	front := &relayService{next: dial(t, backAddr, mesh.WithIdentity(devSource(t, ca, "/front")), mesh.WithTracerProvider(tp))}
	frontAddr := startRelay(t, front, mesh.WithIdentity(devSource(t, ca, "/front")), mesh.WithTracerProvider(tp))
	client := dial(t, frontAddr, mesh.WithIdentity(devSource(t, ca, "/client")), mesh.WithTracerProvider(tp))

	member, _ := baggage.NewMember("tenant", "acme")
	bag, _ := baggage.New(member)
	ctx, root := tp.Tracer("test").Start(baggage.ContextWithBaggage(callTimeout(t), bag), "root")
	resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
	root.End()
	if err != nil {
		t.Fatalf("UnaryCall through two hops: %v", err)
	}
	if got := resp.GetUsername(); got != "acme" {
		t.Errorf("baggage tenant at the last hop = %q, want %q", got, "acme")
	}

	// Server spans end after the response is written: poll for all seven.
	var spans []sdktrace.ReadOnlySpan
	waitFor(t, func() bool { spans = rec.Ended(); return len(spans) >= 7 })

	type hop struct {
		Name, Kind, Parent string
		SameTrace          bool
		Source, Dest       string // mesh.source, mesh.destination: caller and callee
		Attempt            int64  // mesh.attempt
	}
	byID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		byID[s.SpanContext().SpanID()] = s
	}
	var got []hop
	for _, s := range spans {
		parent := "-"
		if p, ok := byID[s.Parent().SpanID()]; ok {
			parent = p.Name() + "/" + p.SpanKind().String()
		}
		h := hop{Name: s.Name(), Kind: s.SpanKind().String(), Parent: parent, SameTrace: s.SpanContext().TraceID() == root.SpanContext().TraceID()}
		for _, kv := range s.Attributes() {
			switch kv.Key {
			case "mesh.source":
				h.Source = kv.Value.AsString()
			case "mesh.destination":
				h.Dest = kv.Value.AsString()
			case "mesh.attempt":
				h.Attempt = kv.Value.AsInt64()
			}
		}
		got = append(got, h)
	}
	sort.Slice(got, func(i, j int) bool {
		return got[i].Kind+got[i].Parent+got[i].Dest < got[j].Kind+got[j].Parent+got[j].Dest
	})
	const m = "grpc.testing.TestService/UnaryCall"
	const clientID, frontID, backID = "spiffe://example.org/client", "spiffe://example.org/front", "spiffe://example.org/back"
	// Each call is a client span with one attempt span beneath, whose
	// context the server continues.
	want := []hop{
		{m, "client", m + "/server", true, frontID, backID, 0},     // front -> back
		{m, "client", "root/internal", true, clientID, frontID, 0}, // client -> front
		{"root", "internal", "-", true, "", "", 0},
		{"attempt " + m, "internal", m + "/client", true, "", backID, 1},
		{"attempt " + m, "internal", m + "/client", true, "", frontID, 1},
		{m, "server", "attempt " + m + "/internal", true, frontID, backID, 0},
		{m, "server", "attempt " + m + "/internal", true, clientID, frontID, 0},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("spans (-want +got):\n%s", diff)
	}
}

func startRelay(t *testing.T, svc testgrpc.TestServiceServer, opts ...mesh.ServerOption) string {
	t.Helper()
	srv, err := mesh.NewServer(opts...)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	testgrpc.RegisterTestServiceServer(srv, svc)
	lis := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		srv.Close()
		<-done
	})
	return lis.Addr().String()
}

// point is one rpc.{client,server}.call.duration data point, by the attributes that matter.
type point struct {
	Side, Source, Destination, Method, Code string
	Count                                   int64
}

func TestMetricsLabelledWithIdentities(t *testing.T) {
	mp, reader, stop := meshtel.NewManualProvider()
	t.Cleanup(stop)
	ca := newDevCA(t, time.Hour)

	const unary = "/grpc.testing.TestService/UnaryCall"
	addr := startServer(t, &echoService{},
		mesh.WithIdentity(devSource(t, ca, "/server")), mesh.WithMeterProvider(mp),
		mesh.WithAuthorizer(mustRules(t,
			security.Refuse("no-intruders", spiffeid.MatchID(id("/intruder"))),
			security.Allow("clients", spiffeid.MatchAny(), "/grpc.testing.TestService/*"),
		)))
	client := dial(t, addr, mesh.WithIdentity(devSource(t, ca, "/client")), mesh.WithMeterProvider(mp))
	intruder := dial(t, addr, mesh.WithIdentity(devSource(t, ca, "/intruder")), mesh.WithMeterProvider(mp))

	for range 3 {
		if _, err := client.UnaryCall(callTimeout(t), &testpb.SimpleRequest{}); err != nil {
			t.Fatalf("UnaryCall: %v", err)
		}
	}
	if _, err := client.EmptyCall(callTimeout(t), &testpb.Empty{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("EmptyCall: %v, want Unimplemented", err)
	}
	for range 2 {
		if _, err := intruder.UnaryCall(callTimeout(t), &testpb.SimpleRequest{}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("intruder UnaryCall: %v, want PermissionDenied", err)
		}
	}

	// Server-side records happen after the response is sent: poll.
	var got []point
	var denials map[string]int64
	const unaryName, empty = "grpc.testing.TestService/UnaryCall", "grpc.testing.TestService/EmptyCall"
	want := []point{
		{"client", "spiffe://example.org/client", "spiffe://example.org/server", empty, "UNIMPLEMENTED", 1},
		{"client", "spiffe://example.org/client", "spiffe://example.org/server", unaryName, "OK", 3},
		{"client", "spiffe://example.org/intruder", "spiffe://example.org/server", unaryName, "PERMISSION_DENIED", 2},
		{"server", "spiffe://example.org/client", "spiffe://example.org/server", empty, "UNIMPLEMENTED", 1},
		{"server", "spiffe://example.org/client", "spiffe://example.org/server", unaryName, "OK", 3},
		{"server", "spiffe://example.org/intruder", "spiffe://example.org/server", unaryName, "PERMISSION_DENIED", 2},
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, denials = collect(t, reader)
		if cmp.Equal(want, got) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("rpc.*.call.duration counts (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]int64{"rule no-intruders spiffe://example.org/intruder " + unary: 2}, denials); diff != "" {
		t.Errorf("mesh.authz.denials (-want +got):\n%s", diff)
	}
}

func collect(t *testing.T, reader *sdkmetric.ManualReader) ([]point, map[string]int64) {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	var points []point
	denials := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if h, ok := m.Data.(metricdata.Histogram[float64]); ok && strings.HasSuffix(m.Name, ".call.duration") {
				side := strings.Split(m.Name, ".")[1]
				for _, dp := range h.DataPoints {
					get := func(k string) string { v, _ := dp.Attributes.Value(attribute.Key(k)); return v.AsString() }
					points = append(points, point{side, get("mesh.source"), get("mesh.destination"),
						get("rpc.method"), get("rpc.response.status_code"), int64(dp.Count)})
				}
			}
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				continue
			}
			for _, dp := range sum.DataPoints {
				get := func(k string) string { v, _ := dp.Attributes.Value(attribute.Key(k)); return v.AsString() }
				switch m.Name {
				case "mesh.authz.denials":
					denials[get("mesh.authz.rule")+" "+get("mesh.source")+" "+get("rpc.method")] += dp.Value
				}
			}
		}
	}
	sort.Slice(points, func(i, j int) bool {
		a, b := points[i], points[j]
		return a.Side+a.Source+a.Method+a.Code < b.Side+b.Source+b.Method+b.Code
	})
	return points, denials
}

func TestWithoutTelemetryRecordsNothing(t *testing.T) {
	mp, reader, stop := meshtel.NewManualProvider()
	t.Cleanup(stop)
	ca := newDevCA(t, time.Hour)
	addr := startServer(t, &echoService{}, mesh.WithIdentity(devSource(t, ca, "/server")),
		mesh.WithMeterProvider(mp), mesh.WithoutTelemetry())
	client := dial(t, addr, mesh.WithIdentity(devSource(t, ca, "/client")), mesh.WithMeterProvider(mp), mesh.WithoutTelemetry())
	if _, err := client.UnaryCall(callTimeout(t), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := collect(t, reader); len(got) != 0 {
		t.Errorf("recorded %v with WithoutTelemetry, want nothing", got)
	}
}

func TestAdminRefusesNonLoopbackAddresses(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:15000", ":15000", "10.1.2.3:15000", "[::]:15000", "example.com:15000"} {
		t.Run(addr, func(t *testing.T) {
			a, err := mesh.NewAdmin(addr, nil)
			if err == nil {
				a.Close()
				t.Fatalf("NewAdmin(%q) succeeded, want an error", addr)
			}
			if !errors.Is(err, admin.ErrNotLoopback) {
				t.Errorf("error %v does not wrap admin.ErrNotLoopback", err)
			}
			if !strings.Contains(err.Error(), "127.0.0.1") {
				t.Errorf("error %q does not say what to use instead", err)
			}
		})
	}
}

func TestAdminEndpointShowsServerAndClient(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	adm := newAdmin(t) // one endpoint for the server and both clients
	srv, err := mesh.NewServer(mesh.WithIdentity(devSource(t, ca, "/server")), mesh.WithAdmin(adm),
		mesh.WithAuthorizer(mustRules(t, security.Allow("clients", spiffeid.MatchID(id("/client"))))))
	if err != nil {
		t.Fatal(err)
	}
	testgrpc.RegisterTestServiceServer(srv, &echoService{})
	lis := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() { cancel(); srv.Close(); <-done })
	addr := lis.Addr().String()

	client := dial(t, addr, mesh.WithIdentity(devSource(t, ca, "/client")), mesh.WithAdmin(adm))
	other := dial(t, addr, mesh.WithIdentity(devSource(t, ca, "/other")), mesh.WithAdmin(adm))
	if _, err := client.UnaryCall(callTimeout(t), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := other.UnaryCall(callTimeout(t), &testpb.SimpleRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("other: %v, want PermissionDenied", err)
	}

	base := "http://" + adm.Addr()
	var st admin.Status
	waitFor(t, func() bool {
		st = getJSON[admin.Status](t, base+"/status")
		return len(st.Denials) == 1 && len(st.Events) >= 4 // 2 client + 2 server calls, 1 denial
	})

	var ids []string
	for _, i := range st.Identities {
		ids = append(ids, i.SPIFFEID)
		if time.Until(i.Expiry) < 50*time.Minute || len(i.Bundles) != 1 || len(i.Bundles[0].Authorities) == 0 {
			t.Errorf("identity %s: expiry %v, bundles %+v; want about an hour and the example.org bundle", i.SPIFFEID, i.Expiry, i.Bundles)
		}
	}
	sort.Strings(ids)
	if diff := cmp.Diff([]string{"spiffe://example.org/client", "spiffe://example.org/other", "spiffe://example.org/server"}, ids); diff != "" {
		t.Errorf("identities (-want +got):\n%s", diff)
	}
	wantComponents := []admin.Component{{Kind: "server", Name: "spiffe://example.org/server"}, {Kind: "client", Name: addr}, {Kind: "client", Name: addr}}
	if diff := cmp.Diff(wantComponents, st.Components); diff != "" {
		t.Errorf("components (-want +got):\n%s", diff)
	}
	d := st.Denials[0]
	if diff := cmp.Diff(admin.Denial{Caller: "spiffe://example.org/other", Method: "/grpc.testing.TestService/UnaryCall", Rule: "default deny"},
		admin.Denial{Caller: d.Caller, Method: d.Method, Rule: d.Rule}); diff != "" {
		t.Errorf("denial (-want +got):\n%s", diff)
	}
	if len(st.Targets) != 1 || st.Targets[0].Target != addr || len(st.Targets[0].Observed) != 1 ||
		st.Targets[0].Observed[0].Identity != "spiffe://example.org/server" {
		t.Errorf("targets = %+v, want %s with one observed endpoint presenting spiffe://example.org/server", st.Targets, addr)
	}
	if len(st.Targets) == 1 && len(st.Targets[0].Endpoints) != 0 {
		t.Errorf("endpoints = %v, want none (discovery not wired to the admin endpoint)", st.Targets[0].Endpoints)
	}
	var kinds []string
	for _, p := range st.Policies {
		kinds = append(kinds, p.Kind+" "+p.Name+" "+p.Source)
	}
	// Both clients of addr use Dial's default resilience policy: shown once.
	if diff := cmp.Diff([]string{"authz authorizer code", "authz health default", "resilience client code"}, kinds); diff != "" {
		t.Errorf("policies (-want +got):\n%s", diff)
	}

	// Non-loopback Host headers (DNS rebinding) are refused.
	req, _ := http.NewRequestWithContext(callTimeout(t), "GET", base+"/status", nil)
	req.Host = "evil.example.com"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("Host evil.example.com: status %d, want 403", resp.StatusCode)
	}

	// channelz and CSDS answer over gRPC on the same port.
	cc, err := grpc.NewClient(adm.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	servers, err := channelzgrpc.NewChannelzClient(cc).GetServers(callTimeout(t), &channelzpb.GetServersRequest{})
	if err != nil {
		t.Errorf("channelz GetServers: %v", err)
	} else if len(servers.GetServer()) == 0 {
		t.Errorf("channelz GetServers lists no server, want the mesh server")
	}
	if _, err := v3statuspb.NewClientStatusDiscoveryServiceClient(cc).FetchClientStatus(callTimeout(t), &v3statuspb.ClientStatusRequest{}); err != nil {
		t.Errorf("CSDS FetchClientStatus: %v", err)
	}
}

func getJSON[T any](t *testing.T, url string) T {
	t.Helper()
	req, _ := http.NewRequestWithContext(callTimeout(t), "GET", url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	var v T
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return v
}

func TestSVIDRotationsCountedOncePerSource(t *testing.T) {
	mp, reader, stop := meshtel.NewManualProvider()
	t.Cleanup(stop)
	ca := newDevCA(t, 2*time.Second) // rotates about every second
	src := devSource(t, ca, "/server")
	// A server and a client sharing one source: each rotation counts once.
	addr := startServer(t, &echoService{}, mesh.WithIdentity(src), mesh.WithMeterProvider(mp))
	dial(t, addr, mesh.WithIdentity(src), mesh.WithMeterProvider(mp))

	rotations := countRotations(t, src)
	var counted int64
	waitFor(t, func() bool {
		counted = 0
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				if sum, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == "mesh.svid.rotations" {
					for _, dp := range sum.DataPoints {
						counted += dp.Value
					}
				}
			}
		}
		return counted >= 2
	})
	if rotated := rotations(); counted > rotated {
		t.Errorf("mesh.svid.rotations = %d, but the source rotated only %d times", counted, rotated)
	}
}

// TestXDSClientUpdatesCounted: for xds:/// targets the mesh takes grpc-go's
// own xDS client metrics (accepted and NACKed updates per resource type,
// the resources held, the connection to the control plane), from the xds
// resolver rather than a stats handler on every call
// (BenchmarkXDSUnaryCall shows the cost per call).
func TestXDSClientUpdatesCounted(t *testing.T) {
	meshd, ca := startXDSTrading(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	mp, reader, stop := meshtel.NewManualProvider()
	t.Cleanup(stop)
	cc, err := mesh.Dial(ctx, "xds:///trading", mesh.WithIdentity(devSource(t, ca, "/gateway")),
		mesh.WithControlPlane(meshd.Addr), mesh.WithMeterProvider(mp))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	callCtx, callCancel := context.WithTimeout(ctx, 20*time.Second)
	defer callCancel()
	if _, err := testgrpc.NewTestServiceClient(cc).UnaryCall(callCtx, &testpb.SimpleRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("call over xDS: %v", err)
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	valid, resources := map[string]int64{}, map[string]int64{}
	var connected []int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if sum, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == "grpc.xds_client.resource_updates_valid" {
				for _, dp := range sum.DataPoints {
					v, _ := dp.Attributes.Value("grpc.xds.resource_type")
					valid[v.AsString()] += dp.Value
				}
			}
			if g, ok := m.Data.(metricdata.Gauge[int64]); ok {
				for _, dp := range g.DataPoints {
					switch m.Name {
					case "grpc.xds_client.connected":
						connected = append(connected, dp.Value)
					case "grpc.xds_client.resources":
						v, _ := dp.Attributes.Value("grpc.xds.resource_type")
						resources[v.AsString()] += dp.Value
					}
				}
			}
		}
	}
	for _, typ := range []string{"ListenerResource", "RouteConfigResource", "ClusterResource", "EndpointsResource"} {
		if valid[typ] == 0 {
			t.Errorf("grpc.xds_client.resource_updates_valid has no %s: %v", typ, valid)
		}
		if resources[typ] == 0 {
			t.Errorf("grpc.xds_client.resources has no %s: %v", typ, resources)
		}
	}
	if !slices.Equal(connected, []int64{1}) {
		t.Errorf("grpc.xds_client.connected = %v, want [1] (one xDS client, connected)", connected)
	}
}

// TestTwoMeshesShareNothing builds two meshes in one process, each with
// its own metrics provider, admin endpoint and identity: calls on one show
// in its metrics and on its admin endpoint only, each owner watches its
// own sources' rotations, and closing both meshes and their owners leaves
// no goroutine behind.
func TestTwoMeshesShareNothing(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	type world struct {
		mp     metric.MeterProvider
		reader *sdkmetric.ManualReader
		stop   func()
		adm    *mesh.Admin
		srv    *mesh.Server
		cc     *grpc.ClientConn
		done   chan error
		cancel context.CancelFunc
		srcs   []*security.DevSource
	}
	build := func(name string) *world {
		w := &world{done: make(chan error, 1)}
		w.mp, w.reader, w.stop = meshtel.NewManualProvider()
		var err error
		if w.adm, err = mesh.NewAdmin("127.0.0.1:0", nil); err != nil {
			t.Fatal(err)
		}
		ca := newDevCA(t, time.Hour)
		srvSrc, err := ca.Source(id("/" + name + "-server"))
		if err != nil {
			t.Fatal(err)
		}
		cliSrc, err := ca.Source(id("/" + name + "-client"))
		if err != nil {
			t.Fatal(err)
		}
		w.srcs = []*security.DevSource{srvSrc, cliSrc}
		if w.srv, err = mesh.NewServer(mesh.WithIdentity(srvSrc), mesh.WithMeterProvider(w.mp), mesh.WithAdmin(w.adm)); err != nil {
			t.Fatal(err)
		}
		testgrpc.RegisterTestServiceServer(w.srv, &echoService{})
		lis := listen(t)
		var ctx context.Context
		ctx, w.cancel = context.WithCancel(context.Background())
		go func() { w.done <- w.srv.Serve(ctx, lis) }()
		if w.cc, err = mesh.Dial(callTimeout(t), lis.Addr().String(), mesh.WithIdentity(cliSrc), mesh.WithMeterProvider(w.mp), mesh.WithAdmin(w.adm)); err != nil {
			t.Fatal(err)
		}
		return w
	}
	a, b := build("a"), build("b")
	if _, err := testgrpc.NewTestServiceClient(a.cc).UnaryCall(callTimeout(t), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}

	names := []string{"rpc.client.call.duration", "rpc.server.call.duration"}
	waitGolden(t, a.reader, names, map[string]int64{
		"rpc.client.call.duration{mesh.destination=spiffe://example.org/a-server,mesh.source=spiffe://example.org/a-client,mesh.target=" + a.cc.Target() + ",rpc.method=grpc.testing.TestService/UnaryCall,rpc.response.status_code=OK,rpc.system.name=grpc}": 1,
		"rpc.server.call.duration{mesh.destination=spiffe://example.org/a-server,mesh.source=spiffe://example.org/a-client,rpc.method=grpc.testing.TestService/UnaryCall,rpc.response.status_code=OK,rpc.system.name=grpc}":                                   1,
	})
	if got := golden(t, b.reader, names); len(got) != 0 {
		t.Errorf("the other mesh's metrics show %v, want nothing", got)
	}
	shown := func(w *world) []string {
		var ids []string
		for _, id := range getJSON[admin.Status](t, "http://"+w.adm.Addr()+"/status").Identities {
			ids = append(ids, id.SPIFFEID)
		}
		sort.Strings(ids)
		return ids
	}
	if diff := cmp.Diff([]string{"spiffe://example.org/a-client", "spiffe://example.org/a-server"}, shown(a)); diff != "" {
		t.Errorf("mesh a's admin endpoint shows (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"spiffe://example.org/b-client", "spiffe://example.org/b-server"}, shown(b)); diff != "" {
		t.Errorf("mesh b's admin endpoint shows (-want +got):\n%s", diff)
	}
	for _, w := range []*world{a, b} {
		if n := w.mp.(meshtel.HubOwner).MeshHub().Rotations.Len(); n != 2 {
			t.Errorf("rotation watches of one mesh's owner: %d, want 2 (its server's and its client's source)", n)
		}
	}

	for _, w := range []*world{a, b} {
		w.cc.Close()
		w.cancel()
		w.srv.Close()
		if err := <-w.done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if n := w.mp.(meshtel.HubOwner).MeshHub().Rotations.Len(); n != 0 {
			t.Errorf("after Close, %d rotation watches remain, want 0", n)
		}
		w.adm.Close()
		w.stop()
		for _, s := range w.srcs {
			s.Close()
		}
	}
}
