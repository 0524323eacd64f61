package consulmesh_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"

	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/internal/testutil/consul"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

const (
	unaryCall = "/grpc.testing.TestService/UnaryCall"
	emptyCall = "/grpc.testing.TestService/EmptyCall"
)

// consulSource opens the Connect CA identity of service on agent a.
func consulSource(t testing.TB, a *consul.Agent, service string) *security.ConsulSource {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src, err := security.NewConsulSource(ctx, security.ConsulConfig{Service: service, API: &api.Config{Address: a.Addr(), Token: a.ManagementToken()}})
	if err != nil {
		t.Fatalf("NewConsulSource(%s): %v", service, err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

// consulID is Consul's SPIFFE ID for service in the default namespace.
func consulID(t testing.TB, src *security.ConsulSource, dc, service string) spiffeid.ID {
	t.Helper()
	id, err := spiffeid.FromSegments(trustDomain(t, src), "ns", "default", "dc", dc, "svc", service)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// trustDomain is the Consul cluster's trust domain, read from src's SVID.
func trustDomain(t testing.TB, src security.Source) spiffeid.TrustDomain {
	t.Helper()
	own, err := security.ID(src)
	if err != nil {
		t.Fatal(err)
	}
	return own.TrustDomain()
}

// watchIntentions follows the intentions of service on a with a's
// management token, callers named by Consul's IDs in src's trust domain.
func watchIntentions(t testing.TB, a *consul.Agent, td spiffeid.TrustDomain, service string) *discovery.Intentions {
	t.Helper()
	reg, err := discovery.New(discovery.Config{Consul: a.Client(), TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	in, err := reg.WatchIntentions(ctx, discovery.IntentionsConfig{Service: service})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	return in
}

// echo answers UnaryCall and EmptyCall, counts calls, and records the
// issuers (authority key IDs) of the client certificates it saw.
type echo struct {
	testgrpc.UnimplementedTestServiceServer
	calls atomic.Int64

	mu      sync.Mutex
	issuers map[string]bool
}

func (e *echo) record(ctx context.Context) {
	e.calls.Add(1)
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 {
			e.mu.Lock()
			if e.issuers == nil {
				e.issuers = map[string]bool{}
			}
			e.issuers[string(info.State.PeerCertificates[0].AuthorityKeyId)] = true
			e.mu.Unlock()
		}
	}
}

func (e *echo) sawIssuer(ski []byte) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.issuers[string(ski)]
}

func (e *echo) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	e.record(ctx)
	caller, _ := mesh.PeerID(ctx)
	return &testpb.SimpleResponse{Username: caller.String()}, nil
}

func (e *echo) EmptyCall(ctx context.Context, _ *testpb.Empty) (*testpb.Empty, error) {
	e.record(ctx)
	return &testpb.Empty{}, nil
}

// serve runs a mesh gRPC server with svc on loopback until the test ends
// and returns its address.
func serve(t testing.TB, svc *echo, opts ...mesh.ServerOption) string {
	t.Helper()
	srv, err := mesh.NewServer(opts...)
	if err != nil {
		t.Fatalf("mesh.NewServer: %v", err)
	}
	testgrpc.RegisterTestServiceServer(srv, svc)
	return serveOn(t, func(ctx context.Context, lis net.Listener) error { return srv.Serve(ctx, lis) }, srv.Close)
}

// serveHTTP runs a mesh HTTP server with h on loopback until the test
// ends and returns its base URL.
func serveHTTP(t testing.TB, h http.Handler, opts ...mesh.ServerOption) string {
	t.Helper()
	srv, err := mesh.NewHTTPServer(h, opts...)
	if err != nil {
		t.Fatalf("mesh.NewHTTPServer: %v", err)
	}
	return "https://" + serveOn(t, srv.Serve, srv.Close)
}

func serveOn(t testing.TB, run func(context.Context, net.Listener) error, closeFn func() error) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		closeFn()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return lis.Addr().String()
}

// dial connects to addr through the mesh, closed when the test ends.
func dial(t testing.TB, addr string, opts ...mesh.DialOption) *grpc.ClientConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, err := mesh.Dial(ctx, addr, opts...)
	if err != nil {
		t.Fatalf("mesh.Dial(%s): %v", addr, err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// httpDo sends one request and returns the status and body.
func httpDo(ctx context.Context, c *http.Client, method, url string, header ...string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return 0, "", err
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(body)), err
}

// rootSKI is the subject key ID of the CA root with ID id.
func rootSKI(t testing.TB, roots *api.CARootList, id string) []byte {
	t.Helper()
	for _, r := range roots.Roots {
		if r.ID == id {
			certs, err := parsePEM(r.RootCertPEM)
			if err != nil || len(certs) == 0 {
				t.Fatalf("root %s: %v", id, err)
			}
			return certs[0].SubjectKeyId
		}
	}
	t.Fatalf("no root %s", id)
	return nil
}

func parsePEM(s string) ([]*x509.Certificate, error) {
	var der []byte
	rest := []byte(s)
	for {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return x509.ParseCertificates(der)
		}
		der = append(der, b.Bytes...)
	}
}
