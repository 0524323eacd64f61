package mesh_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

// BenchmarkHTTPRoundTrip measures one GET through the mesh client and
// server (mTLS, HTTP/2, normalization, authorization, the mesh's telemetry with no-op
// providers) on loopback, against a keep-alive connection.
func BenchmarkHTTPRoundTrip(b *testing.B) {
	ca := newDevCABench(b)
	srcS, _ := ca.Source(id("/server"))
	defer srcS.Close()
	srcC, _ := ca.Source(id("/client"))
	defer srcC.Close()
	srv, err := mesh.NewHTTPServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), mesh.WithIdentity(srcS))
	if err != nil {
		b.Fatal(err)
	}
	lis := listenBench(b)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	defer func() { cancel(); <-done }()
	c, err := mesh.HTTPClient(mesh.WithIdentity(srcC))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Transport.(*mesh.HTTPTransport).Close()
	url := "http://" + lis.Addr().String() + "/v1/trades/42"
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Get(url)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}

func newDevCABench(b *testing.B) *security.DevCA {
	ca, err := security.NewDevCA(td, security.DevCAConfig{SVIDTTL: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	return ca
}

func listenBench(b *testing.B) net.Listener {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	return lis
}
