package bench_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/gridmesh/gridmesh/bench/internal/echo"
	"github.com/gridmesh/gridmesh/internal/testutil/overhead"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

// BenchmarkDefaultPolicyAdds measures what the default resilience policy
// (mesh.Dial's and mesh.HTTPClient's unless WithoutResilience) adds to a
// mesh call that succeeds on its first attempt, against the same call with
// mesh.WithoutResilience in the same run, telemetry off on both so that
// only the policy differs. ns/op and allocs/op are the call with the
// policy, client and server in one process; added-allocs/op and
// added-ns/op the difference to the call without it (see overhead.Report).
// Issue 17's target: at most 8 added allocations.
func BenchmarkDefaultPolicyAdds(b *testing.B) {
	b.Run("grpc/100B", func(b *testing.B) {
		tel := []mesh.Option{mesh.WithoutTelemetry()}
		bare := startMesh(b, tel, []mesh.DialOption{mesh.WithoutResilience()})
		with := startMesh(b, tel, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		req := echo.Request(100)
		call := func(c testgrpc.TestServiceClient) func() {
			return func() {
				if _, err := c.UnaryCall(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		}
		overhead.Report(b, call(bare), call(with))
	})
	b.Run("http/100B", func(b *testing.B) {
		url := startMeshHTTP(b)
		bare := meshHTTPClient(b, mesh.WithoutResilience())
		with := meshHTTPClient(b)
		body := make([]byte, 100)
		call := func(hc *http.Client) func() {
			return func() {
				resp, err := hc.Post(url, "application/octet-stream", bytes.NewReader(body))
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("HTTP %d", resp.StatusCode)
				}
			}
		}
		overhead.Report(b, call(bare), call(with))
	})
}

// startMeshHTTP serves echo.HTTPHandler with mesh.NewHTTPServer, telemetry
// off, and returns its URL.
func startMeshHTTP(b *testing.B) string {
	b.Helper()
	srv, err := mesh.NewHTTPServer(echo.HTTPHandler(), mesh.WithIdentity(devSource(b, "/server")), mesh.WithoutTelemetry())
	if err != nil {
		b.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx, lis); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	return "http://" + lis.Addr().String() + echo.HTTPPath
}

// meshHTTPClient is mesh.HTTPClient with telemetry off and opts.
func meshHTTPClient(b *testing.B, opts ...mesh.DialOption) *http.Client {
	b.Helper()
	hc, err := mesh.HTTPClient(append([]mesh.DialOption{mesh.WithIdentity(devSource(b, "/client")), mesh.WithoutTelemetry()}, opts...)...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = hc.Transport.(*mesh.HTTPTransport).Close() })
	return hc
}

var benchCA *security.DevCA

// devSource returns an SVID source for path from one dev CA per process.
func devSource(b *testing.B, path string) *security.DevSource {
	b.Helper()
	if benchCA == nil {
		ca, err := security.NewDevCA(td, security.DevCAConfig{})
		if err != nil {
			b.Fatal(err)
		}
		benchCA = ca
	}
	src, err := benchCA.Source(spiffeid.RequireFromPath(td, path))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { src.Close() })
	return src
}
