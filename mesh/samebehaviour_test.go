package mesh_test

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/internal/testutil/consul"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/resilience"
	"github.com/gridmesh/gridmesh/resilience/idempotency"
	"github.com/gridmesh/gridmesh/security"
)

// protocolUnderTest drives one protocol's server and client through the
// same calls, so one table can hold both to the same behaviour.
type protocolUnderTest struct {
	name string
	// failing starts a server whose every call runs the handler, then
	// fails in the way clients may retry (UNAVAILABLE, 503).
	failing func(t *testing.T, src security.Source) (addr string, runs *atomic.Int64)
	// applying starts a server with WithIdempotency whose handler counts
	// runs and answers the request's body.
	applying func(t *testing.T, src security.Source) (addr string, runs *atomic.Int64)
	// call makes one write (gRPC unary, HTTP POST) to service, with an
	// idempotency key when key is not empty, and returns the answer.
	call func(t *testing.T, c caller, service, key, body string) (string, error)
	// client builds a client for consul:/// (or static:///) services.
	client func(t *testing.T, opts ...mesh.DialOption) caller
}

// caller is a protocol's client, as call needs it.
type caller any

type grpcCaller struct {
	conns map[string]*grpc.ClientConn
	opts  []mesh.DialOption
}

var protocols = []protocolUnderTest{
	{
		name: "gRPC",
		failing: func(t *testing.T, src security.Source) (string, *atomic.Int64) {
			svc := &unavailableService{}
			return startServer(t, svc, mesh.WithIdentity(src)), &svc.runs
		},
		applying: func(t *testing.T, src security.Source) (string, *atomic.Int64) {
			svc := &echoService{}
			return startServer(t, svc, mesh.WithIdentity(src), mesh.WithIdempotency(idempotency.NewMemoryStore(time.Hour))), &svc.calls
		},
		client: func(t *testing.T, opts ...mesh.DialOption) caller {
			return &grpcCaller{conns: map[string]*grpc.ClientConn{}, opts: opts}
		},
		call: func(t *testing.T, c caller, target, key, body string) (string, error) {
			t.Helper()
			gc := c.(*grpcCaller)
			cc, ok := gc.conns[target]
			if !ok {
				var err error
				if cc, err = mesh.Dial(callTimeout(t), target, gc.opts...); err != nil {
					t.Fatalf("Dial %s: %v", target, err)
				}
				t.Cleanup(func() { cc.Close() })
				gc.conns[target] = cc
			}
			ctx := callTimeout(t)
			if key != "" {
				ctx = resilience.WithIdempotencyKey(ctx, key)
			}
			resp, err := testpb.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte(body)}}, grpc.WaitForReady(true))
			return string(resp.GetPayload().GetBody()), err
		},
	},
	{
		name: "HTTP",
		failing: func(t *testing.T, src security.Source) (string, *atomic.Int64) {
			runs := &atomic.Int64{}
			addr, _ := startHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				runs.Add(1)
				http.Error(w, "down for the test", http.StatusServiceUnavailable)
			}), mesh.WithIdentity(src))
			return addr, runs
		},
		applying: func(t *testing.T, src security.Source) (string, *atomic.Int64) {
			runs := &atomic.Int64{}
			addr, _ := startHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				runs.Add(1)
				io.Copy(w, r.Body)
			}), mesh.WithIdentity(src), mesh.WithIdempotency(idempotency.NewMemoryStore(time.Hour)))
			return addr, runs
		},
		client: func(t *testing.T, opts ...mesh.DialOption) caller {
			return httpClient(t, opts...)
		},
		call: func(t *testing.T, c caller, target, key, body string) (string, error) {
			t.Helper()
			url := "https://" + strings.TrimPrefix(target, "static:///") + "/write"
			if svc, ok := strings.CutPrefix(target, "consul:///"); ok {
				url = "https://" + svc + ".mesh/write"
			}
			req, err := http.NewRequestWithContext(callTimeout(t), http.MethodPost, url, strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if key != "" {
				req.Header.Set(idempotency.Header, key)
			}
			resp, err := c.(*http.Client).Do(req)
			if err != nil {
				return "", err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK {
				return "", fmt.Errorf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(b))
			}
			return string(b), err
		},
	},
}

// TestBothProtocolsBehaveAlike holds gRPC (NewServer, Dial) and HTTP
// (NewHTTPServer, HTTPClient) to one table: a write is retried only when
// it carries an idempotency key; a keyed write is applied once however
// often it is sent; and where a consul:/// service's retry policy comes
// from follows one rule, code over the service's Consul meta over the
// mesh's default.
func TestBothProtocolsBehaveAlike(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	agent := consul.Start(t)
	reg, err := discovery.New(discovery.Config{Consul: agent.Client(), TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	defaultAttempts := resilience.Default().Retry.MaxAttempts
	codePolicy := resilience.DefaultConfig()
	codePolicy.Default.Retry.MaxAttempts = 4

	tests := []struct {
		name  string
		meta  map[string]string // the service's Consul meta
		code  bool              // WithResiliencePolicy (4 attempts)
		keyed bool
		want  int64 // handler runs for one call
	}{
		{"write without key: sent once", nil, false, false, 1},
		{"keyed write: the default policy's attempts", nil, false, true, int64(defaultAttempts)},
		{"keyed write: Consul meta over the default", map[string]string{"resilience-retry-max-attempts": "2"}, false, true, 2},
		{"write without key: Consul meta cannot make it retried", map[string]string{"resilience-retry-max-attempts": "5"}, false, false, 1},
		{"keyed write: code over Consul meta", map[string]string{"resilience-retry-max-attempts": "2"}, true, true, 4},
		{"write without key: code cannot make it retried", nil, true, false, 1},
	}
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			serverID := "/service/" + strings.ToLower(p.name) + "-failing"
			addr, runs := p.failing(t, devSource(t, ca, serverID))
			host, portStr, _ := net.SplitHostPort(addr)
			port, _ := strconv.Atoi(portStr)
			for i, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					service := fmt.Sprintf("%s-case-%d", strings.ToLower(p.name), i)
					meta := map[string]string{"spiffe_id": id(serverID).String()}
					for k, v := range tc.meta {
						meta[k] = v
					}
					if err := agent.Client().Agent().ServiceRegister(&api.AgentServiceRegistration{ID: service + "-1", Name: service,
						Address: host, Port: port, Meta: meta, Check: &api.AgentServiceCheck{TTL: "1h", Status: api.HealthPassing}}); err != nil {
						t.Fatal(err)
					}
					var logs lockedBuffer
					opts := []mesh.DialOption{mesh.WithIdentity(devSource(t, ca, "/gateway")), mesh.WithRegistry(reg),
						mesh.WithLogger(slog.New(slog.NewTextHandler(&logs, nil)))}
					if tc.code {
						opts = append(opts, mesh.WithResiliencePolicy(codePolicy))
					}
					c := p.client(t, opts...)
					target := "consul:///" + service
					if tc.meta != nil && !tc.code {
						// The first call starts following the service (an HTTP
						// client follows a service from its first request);
						// measure once its meta is in force. The warm-up has no
						// key, so it is sent once and cannot open the breaker.
						_, _ = p.call(t, c, target, "", "x")
						waitFor(t, func() bool { return strings.Contains(logs.String(), "resilience policy from Consul meta applied") })
					}
					key := ""
					if tc.keyed {
						key = "key-" + service
					}
					before := runs.Load()
					if _, err := p.call(t, c, target, key, "40 MWh"); err == nil {
						t.Fatal("call to a failing server succeeded")
					}
					if got := runs.Load() - before; got != tc.want {
						t.Errorf("handler ran %d times for one call, want %d", got, tc.want)
					}
				})
			}
			t.Run("keyed write applied once", func(t *testing.T) {
				addr, runs := p.applying(t, devSource(t, ca, "/service/"+strings.ToLower(p.name)+"-ledger"))
				c := p.client(t, mesh.WithIdentity(devSource(t, ca, "/gateway")))
				for i := range 3 {
					got, err := p.call(t, c, "static:///"+addr, "transfer-42", "40 MWh")
					if err != nil || got != "40 MWh" {
						t.Fatalf("send %d: %q, %v; want the first answer", i, got, err)
					}
				}
				if n := runs.Load(); n != 1 {
					t.Errorf("handler ran %d times for one key, want 1", n)
				}
			})
		})
	}
}
