package mesh_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

// A meshed HTTP service and a meshed client: mTLS with SPIFFE IDs on both
// sides, an HTTP authorization rule, and a service name resolved to
// endpoints.
func ExampleNewHTTPServer() {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	ca, _ := security.NewDevCA(td, security.DevCAConfig{SVIDTTL: time.Hour})
	serverID, _ := ca.Source(spiffeid.RequireFromPath(td, "/trading"))
	defer serverID.Close()
	clientID, _ := ca.Source(spiffeid.RequireFromPath(td, "/gateway"))
	defer clientID.Close()

	rules, _ := security.HTTPRules(
		security.Allow("gateway-reads", spiffeid.MatchID(spiffeid.RequireFromPath(td, "/gateway")), "GET /v1/trades/**"),
	)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/trades/{id}", func(w http.ResponseWriter, r *http.Request) {
		caller, _ := mesh.PeerID(r.Context())
		fmt.Fprintf(w, "trade %s for %s", r.PathValue("id"), caller)
	})
	srv, _ := mesh.NewHTTPServer(mux, mesh.WithIdentity(serverID), mesh.WithAuthorizer(rules))
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	defer func() { cancel(); <-done }()

	client, _ := mesh.HTTPClient(mesh.WithIdentity(clientID),
		mesh.WithHTTPTarget("trading.mesh", "static:///"+lis.Addr().String()+"?spiffe_id=spiffe://example.org/trading"))
	defer client.Transport.(*mesh.HTTPTransport).Close()

	for _, path := range []string{"/v1/trades/42", "/v1//trades/./7", "/v1/accounts/1"} {
		resp, err := client.Get("http://trading.mesh" + path)
		if err != nil {
			fmt.Println(err)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		server, _ := mesh.ServerID(resp)
		fmt.Printf("%d from %s: %s", resp.StatusCode, server, body)
		if resp.StatusCode == http.StatusOK {
			fmt.Println()
		}
	}
	// Output:
	// 200 from spiffe://example.org/trading: trade 42 for spiffe://example.org/gateway
	// 200 from spiffe://example.org/trading: trade 7 for spiffe://example.org/gateway
	// 403 from spiffe://example.org/trading: gridmesh: spiffe://example.org/gateway may not call GET /v1/accounts/1 (decided by default deny)
}
