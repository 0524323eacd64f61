// Command greeter is a meshed gRPC server: it gets its identity from the
// SPIFFE Workload API, lets only the caller workload in, and tells each
// caller both identities.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/gridmesh/gridmesh/examples/hello/hellopb"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "greeter:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	listen := flag.String("listen", "127.0.0.1:8443", "address to serve on")
	allow := flag.String("allow", "spiffe://gridmesh.dev/caller", "SPIFFE ID allowed to call Hello")
	flag.Parse()
	allowed, err := spiffeid.FromString(*allow)
	if err != nil {
		return fmt.Errorf("-allow %q: %w", *allow, err)
	}

	// The identity comes from SPIFFE_ENDPOINT_SOCKET: a SPIRE agent in
	// production, `meshd dev` on a laptop.
	src, err := security.NewWorkloadAPISource(ctx, security.WorkloadAPIConfig{})
	if err != nil {
		return err
	}
	defer src.Close()

	authz, err := security.Rules(
		security.Allow("caller-says-hello", spiffeid.MatchID(allowed), hellopb.Greeter_Hello_FullMethodName),
	)
	if err != nil {
		return err
	}
	srv, err := mesh.NewServer(mesh.WithIdentity(src), mesh.WithAuthorizer(authz))
	if err != nil {
		return err
	}
	defer srv.Close()
	hellopb.RegisterGreeterServer(srv, &greeter{id: srv.ID()})

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Printf("greeter: serving as %s on %s\n", srv.ID(), lis.Addr())
	return srv.Serve(ctx, lis)
}

type greeter struct {
	hellopb.UnimplementedGreeterServer
	id spiffeid.ID
}

func (g *greeter) Hello(ctx context.Context, req *hellopb.HelloRequest) (*hellopb.HelloReply, error) {
	caller, _ := mesh.PeerID(ctx)
	fmt.Printf("greeter: %q from %s\n", req.GetText(), caller)
	return &hellopb.HelloReply{Text: "hello, " + caller.Path(), CallerId: caller.String(), GreeterId: g.id.String()}, nil
}
