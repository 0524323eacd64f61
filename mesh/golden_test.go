package mesh_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/internal/meshtel"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/resilience"
	"github.com/gridmesh/gridmesh/security"
)

// meteredProvider returns a MeterProvider that collects the mesh's call
// metrics, and its reader.
func meteredProvider(t *testing.T) (mesh.Option, *sdkmetric.ManualReader) {
	mp, reader, stop := meshtel.NewManualProvider()
	t.Cleanup(stop)
	return mesh.WithMeterProvider(mp), reader
}

// golden reads the named metrics as "name{attr=value,...}" -> count (the
// data point count of a histogram, the value of a counter). Attributes in
// drop are left out.
func golden(t *testing.T, reader *sdkmetric.ManualReader, names []string, drop ...string) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	skip := map[attribute.Key]bool{}
	for _, d := range drop {
		skip[attribute.Key(d)] = true
	}
	label := func(name string, s attribute.Set) string {
		var parts []string
		for _, kv := range s.ToSlice() {
			if !skip[kv.Key] {
				parts = append(parts, string(kv.Key)+"="+kv.Value.Emit())
			}
		}
		sort.Strings(parts)
		return name + "{" + strings.Join(parts, ",") + "}"
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if !want[m.Name] {
				continue
			}
			switch d := m.Data.(type) {
			case metricdata.Histogram[float64]:
				for _, dp := range d.DataPoints {
					got[label(m.Name, dp.Attributes)] += int64(dp.Count)
				}
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					got[label(m.Name, dp.Attributes)] += dp.Value
				}
			}
		}
	}
	return got
}

// waitGolden polls golden until it equals want (server records land after
// the response is sent) and reports the difference if it never does.
func waitGolden(t *testing.T, reader *sdkmetric.ManualReader, names []string, want map[string]int64, drop ...string) {
	t.Helper()
	var got map[string]int64
	deadline := time.Now().Add(10 * time.Second)
	for {
		got = golden(t, reader, names, drop...)
		if cmp.Equal(want, got) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("%v (-want +got):\n%s", names, diff)
	}
}

// noBreaker is the default resilience policy without its circuit
// breaker, so a run of failures does not stop attempts being sent.
func noBreaker() mesh.DialOption {
	cfg := resilience.DefaultConfig()
	cfg.Default.Breaker = resilience.Breaker{}
	return mesh.WithResiliencePolicy(cfg)
}

// flakyService fails UnaryCall with UNAVAILABLE: always when the request's
// ResponseSize is 2, the first time it sees a payload when it is 1.
type flakyService struct {
	testgrpc.UnimplementedTestServiceServer
	mu   sync.Mutex
	seen map[string]bool
}

func (s *flakyService) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch req.GetResponseSize() {
	case 2:
		return nil, status.Error(codes.Unavailable, "down")
	case 1:
		body := string(req.GetPayload().GetBody())
		if !s.seen[body] {
			if s.seen == nil {
				s.seen = map[string]bool{}
			}
			s.seen[body] = true
			return nil, status.Error(codes.Unavailable, "warming up")
		}
	}
	return &testpb.SimpleResponse{}, nil
}

// TestGoldenMetricsGRPC makes calls of each kind (OK, retried once then
// OK, failed after every retry, denied, to methods the server does not
// have, by a caller allowed to call them and by one refused) and checks
// the exact counts of calls and attempts per status and identity pair on
// both sides, of denials by rule, and that unknown methods collapse into one
// series.
func TestGoldenMetricsGRPC(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	metered, reader := meteredProvider(t)
	addr := startServer(t, &flakyService{}, mesh.WithIdentity(devSource(t, ca, "/server")), metered,
		mesh.WithAuthorizer(mustRules(t,
			security.Refuse("no-intruders", spiffeid.MatchID(id("/intruder"))),
			security.Allow("clients", spiffeid.MatchAny(), "/grpc.testing.TestService/*"),
			security.Allow("client", spiffeid.MatchID(id("/client"))),
		)))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cc, err := mesh.Dial(ctx, addr, mesh.WithIdentity(devSource(t, ca, "/client")), metered, noBreaker())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := testgrpc.NewTestServiceClient(cc)
	intruder := dial(t, addr, mesh.WithIdentity(devSource(t, ca, "/intruder")), metered)
	intruderCC, err := mesh.Dial(ctx, addr, mesh.WithIdentity(devSource(t, ca, "/intruder")), metered)
	if err != nil {
		t.Fatal(err)
	}
	defer intruderCC.Close()

	const ok, retried, failed, denied, unknown, unknownDenied = 3, 2, 2, 2, 20, 10
	for i := range ok {
		if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	for i := range retried { // an idempotency key makes UNAVAILABLE retryable
		kctx := resilience.WithIdempotencyKey(ctx, fmt.Sprint("retried-", i))
		if _, err := client.UnaryCall(kctx, &testpb.SimpleRequest{ResponseSize: 1, Payload: &testpb.Payload{Body: []byte{byte(i)}}}); err != nil {
			t.Fatalf("retried call %d: %v", i, err)
		}
	}
	for i := range failed {
		kctx := resilience.WithIdempotencyKey(ctx, fmt.Sprint("failed-", i))
		if _, err := client.UnaryCall(kctx, &testpb.SimpleRequest{ResponseSize: 2}); status.Code(err) != codes.Unavailable {
			t.Fatalf("failing call %d: %v, want Unavailable", i, err)
		}
	}
	for i := range denied {
		if _, err := intruder.UnaryCall(ctx, &testpb.SimpleRequest{}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("intruder call %d: %v, want PermissionDenied", i, err)
		}
	}
	for i := range unknown { // a caller inventing method names, then services
		method, msg := fmt.Sprintf("/grpc.testing.TestService/Made%d", i), fmt.Sprintf("unknown method Made%d for service grpc.testing.TestService", i)
		if i%2 == 1 {
			method, msg = fmt.Sprintf("/made.Up%d/Call", i), fmt.Sprintf("unknown service made.Up%d", i)
		}
		err := cc.Invoke(ctx, method, &testpb.Empty{}, &testpb.Empty{})
		if s := status.Convert(err); s.Code() != codes.Unimplemented || s.Message() != msg {
			t.Fatalf("unknown method %s: %v, want Unimplemented %q, as grpc-go answers", method, err, msg)
		}
	}
	for i := range unknownDenied { // an intruder probing for methods: refused, and counted bounded
		err := intruderCC.Invoke(ctx, fmt.Sprintf("/made.Up%d/Call", i), &testpb.Empty{}, &testpb.Empty{})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("intruder's unknown method %d: %v, want PermissionDenied", i, err)
		}
	}

	const (
		method = "grpc.testing.TestService/UnaryCall"
		srv    = "mesh.destination=spiffe://example.org/server,mesh.source=spiffe://example.org/"
	)
	client1 := func(metric, m, code string) string {
		return metric + "{mesh.destination=spiffe://example.org/server,mesh.source=spiffe://example.org/client,mesh.target=" + addr +
			",rpc.method=" + m + ",rpc.response.status_code=" + code + ",rpc.system.name=grpc}"
	}
	intr := func(metric, code string) string {
		return metric + "{mesh.destination=spiffe://example.org/server,mesh.source=spiffe://example.org/intruder,mesh.target=" + addr +
			",rpc.method=" + method + ",rpc.response.status_code=" + code + ",rpc.system.name=grpc}"
	}
	server := func(caller, code string) string {
		return "rpc.server.call.duration{" + srv + caller + ",rpc.method=" + method + ",rpc.response.status_code=" + code + ",rpc.system.name=grpc}"
	}
	intrOther := func(metric string) string {
		return metric + "{mesh.destination=spiffe://example.org/server,mesh.source=spiffe://example.org/intruder,mesh.target=" + addr +
			",rpc.method=_OTHER,rpc.response.status_code=PERMISSION_DENIED,rpc.system.name=grpc}"
	}
	serverOther := func(caller, code string) string {
		return "rpc.server.call.duration{" + srv + caller + ",rpc.method=_OTHER,rpc.response.status_code=" + code + ",rpc.system.name=grpc}"
	}
	want := map[string]int64{
		// Calls: one per call, whatever the attempts.
		client1("rpc.client.call.duration", method, "OK"):              ok + retried,
		client1("rpc.client.call.duration", method, "UNAVAILABLE"):     failed,
		client1("rpc.client.call.duration", "_OTHER", "UNIMPLEMENTED"): unknown,
		intr("rpc.client.call.duration", "PERMISSION_DENIED"):          denied,
		// Attempts: the retried calls failed once, the failed ones at
		// every one of the default policy's three attempts.
		client1("mesh.rpc.client.attempts", method, "OK"):              ok + retried,
		client1("mesh.rpc.client.attempts", method, "UNAVAILABLE"):     retried + 3*failed,
		client1("mesh.rpc.client.attempts", "_OTHER", "UNIMPLEMENTED"): unknown,
		intr("mesh.rpc.client.attempts", "PERMISSION_DENIED"):          denied,
		intrOther("rpc.client.call.duration"):                          unknownDenied,
		intrOther("mesh.rpc.client.attempts"):                          unknownDenied,
		// The server sees attempts; methods it does not have are counted
		// under one rpc.method, however many names callers invent.
		server("client", "OK"):                       ok + retried,
		server("client", "UNAVAILABLE"):              retried + 3*failed,
		server("intruder", "PERMISSION_DENIED"):      denied,
		serverOther("client", "UNIMPLEMENTED"):       unknown,
		serverOther("intruder", "PERMISSION_DENIED"): unknownDenied,
		"mesh.authz.denials{mesh.authz.rule=rule no-intruders,mesh.source=spiffe://example.org/intruder,rpc.method=" + "/" + method + "}": denied,
		"mesh.authz.denials{mesh.authz.rule=rule no-intruders,mesh.source=spiffe://example.org/intruder,rpc.method=_OTHER}":               unknownDenied,
	}
	waitGolden(t, reader, []string{"rpc.client.call.duration", "mesh.rpc.client.attempts", "rpc.server.call.duration", "mesh.authz.denials"}, want)
}

// TestGoldenMetricsHTTP is TestGoldenMetricsGRPC for the HTTP pair: OK,
// a 503 retried once, a 503 on every attempt, a denial, and requests to
// paths no route has, which must not grow the series (paths are not
// labels; the route pattern is).
func TestGoldenMetricsHTTP(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	metered, reader := meteredProvider(t)
	authz, err := security.HTTPRules(
		security.Refuse("no-intruders", spiffeid.MatchID(id("/intruder")), "GET /**"),
		security.Allow("reads", spiffeid.MatchAny(), "GET /**"))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]bool{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/trades/{id}", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		switch id := r.PathValue("id"); {
		case strings.HasPrefix(id, "down"):
			http.Error(w, "down", http.StatusServiceUnavailable)
		case strings.HasPrefix(id, "flaky") && !seen[id]:
			seen[id] = true
			http.Error(w, "warming up", http.StatusServiceUnavailable)
		default:
			io.WriteString(w, "ok")
		}
	})
	addr, _ := startHTTPServer(t, mux, mesh.WithIdentity(devSource(t, ca, "/trading")), mesh.WithAuthorizer(authz), metered)
	c := httpClient(t, mesh.WithIdentity(devSource(t, ca, "/gateway")), metered, noBreaker(), mesh.WithHTTPTarget("trading.mesh", "static:///"+addr))
	intruder := httpClient(t, mesh.WithIdentity(devSource(t, ca, "/intruder")), metered, mesh.WithHTTPTarget("trading.mesh", "static:///"+addr))

	const ok, retried, failed, denied, unknown = 3, 2, 2, 2, 20
	get := func(c *http.Client, path string, want int) {
		t.Helper()
		req, _ := http.NewRequestWithContext(callTimeout(t), http.MethodGet, "http://trading.mesh"+path, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("GET %s: status %d, want %d", path, resp.StatusCode, want)
		}
	}
	for i := range ok {
		get(c, fmt.Sprint("/v1/trades/", i), 200)
	}
	for i := range retried {
		get(c, fmt.Sprint("/v1/trades/flaky", i), 200)
	}
	for i := range failed {
		get(c, fmt.Sprint("/v1/trades/down", i), 503)
	}
	for range denied {
		get(intruder, "/v1/trades/1", 403)
	}
	for i := range unknown {
		get(c, fmt.Sprint("/made/up/", i), 404)
	}

	const route = "/v1/trades/{id}"
	cl := func(metric, caller string, code int) string {
		return fmt.Sprintf("%s{http.request.method=GET,http.response.status_code=%d,mesh.destination=spiffe://example.org/trading,mesh.source=spiffe://example.org/%s,mesh.target=trading.mesh}", metric, code, caller)
	}
	sv := func(caller string, code int, route string) string {
		r := ""
		if route != "" {
			r = ",http.route=" + route
		}
		return fmt.Sprintf("http.server.request.duration{http.request.method=GET,http.response.status_code=%d%s,mesh.destination=spiffe://example.org/trading,mesh.source=spiffe://example.org/%s}", code, r, caller)
	}
	want := map[string]int64{
		cl("http.client.request.duration", "gateway", 200):  ok + retried,
		cl("http.client.request.duration", "gateway", 503):  failed,
		cl("http.client.request.duration", "gateway", 404):  unknown,
		cl("http.client.request.duration", "intruder", 403): denied,
		cl("mesh.http.client.attempts", "gateway", 200):     ok + retried,
		cl("mesh.http.client.attempts", "gateway", 503):     retried + 3*failed,
		cl("mesh.http.client.attempts", "gateway", 404):     unknown,
		cl("mesh.http.client.attempts", "intruder", 403):    denied,
		sv("gateway", 200, route):                           ok + retried,
		sv("gateway", 503, route):                           retried + 3*failed,
		sv("gateway", 404, ""):                              unknown,
		sv("intruder", 403, ""):                             denied,
	}
	waitGolden(t, reader, []string{"http.client.request.duration", "mesh.http.client.attempts", "http.server.request.duration"}, want)
}

// TestUnknownMethodsAreAuthorized: a call to a method the server does not
// register is authorized like any other, with telemetry on or off: an
// allowed caller gets grpc-go's Unimplemented answer, a refused one
// PermissionDenied and the denial hook, so probing for methods tells a
// refused caller nothing. (grpc-go alone answers before any interceptor.)
func TestUnknownMethodsAreAuthorized(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	for _, tc := range []struct {
		name string
		tel  mesh.Option
	}{
		{"telemetry off", mesh.WithoutTelemetry()},
		{"metrics on", func() mesh.Option { o, _ := meteredProvider(t); return o }()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var denials atomic.Int64
			addr := startServer(t, &echoService{}, mesh.WithIdentity(devSource(t, ca, "/server")), tc.tel,
				mesh.WithDenialHook(func(*security.DeniedError) { denials.Add(1) }),
				mesh.WithAuthorizer(mustRules(t, security.Allow("client", spiffeid.MatchID(id("/client"))))))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			conn := func(caller string) *grpc.ClientConn {
				cc, err := mesh.Dial(ctx, addr, mesh.WithIdentity(devSource(t, ca, caller)), tc.tel)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { cc.Close() })
				return cc
			}
			client, intruder := conn("/client"), conn("/intruder")
			for _, c := range []struct {
				cc      *grpc.ClientConn
				method  string
				code    codes.Code
				message string
				denials int64
			}{
				{client, "/grpc.testing.TestService/Made", codes.Unimplemented, "unknown method Made for service grpc.testing.TestService", 0},
				{client, "/made.Up/Call", codes.Unimplemented, "unknown service made.Up", 0},
				{intruder, "/grpc.testing.TestService/Made", codes.PermissionDenied, "", 1},
				{intruder, "/made.Up/Call", codes.PermissionDenied, "", 2},
			} {
				err := c.cc.Invoke(ctx, c.method, &testpb.Empty{}, &testpb.Empty{})
				if s := status.Convert(err); s.Code() != c.code || (c.message != "" && s.Message() != c.message) {
					t.Errorf("%s: %v, want %v %q", c.method, err, c.code, c.message)
				}
				if got := denials.Load(); got != c.denials {
					t.Errorf("after %s: %d denials, want %d", c.method, got, c.denials)
				}
			}
		})
	}
}
