package mesh_test

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/examples/hello/hellopb"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

type greeter struct {
	hellopb.UnimplementedGreeterServer
}

func (greeter) Hello(ctx context.Context, req *hellopb.HelloRequest) (*hellopb.HelloReply, error) {
	caller, _ := mesh.PeerID(ctx)
	return &hellopb.HelloReply{Text: "hello, " + req.GetText(), CallerId: caller.String()}, nil
}

// A meshed gRPC server that lets one workload call it, and two meshed
// clients: the allowed one and another member of the trust domain.
func ExampleNewServer() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	ca, _ := security.NewDevCA(td, security.DevCAConfig{SVIDTTL: time.Hour})
	greeterID := spiffeid.RequireFromPath(td, "/greeter")
	callerID := spiffeid.RequireFromPath(td, "/caller")
	serverSrc, _ := ca.Source(greeterID)
	defer serverSrc.Close()

	authz, err := security.Rules(
		security.Allow("caller-says-hello", spiffeid.MatchID(callerID), hellopb.Greeter_Hello_FullMethodName),
	)
	if err != nil {
		fmt.Println(err)
		return
	}
	srv, err := mesh.NewServer(mesh.WithIdentity(serverSrc), mesh.WithAuthorizer(authz))
	if err != nil {
		fmt.Println(err)
		return
	}
	hellopb.RegisterGreeterServer(srv, greeter{})
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	serveCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(serveCtx, lis) }()
	defer func() { stop(); <-done }()

	for _, path := range []string{"/caller", "/stranger"} {
		src, _ := ca.Source(spiffeid.RequireFromPath(td, path))
		cc, err := mesh.Dial(ctx, "static:///"+lis.Addr().String(), mesh.WithIdentity(src), mesh.WithServerID(greeterID))
		if err != nil {
			fmt.Println(err)
			return
		}
		reply, err := hellopb.NewGreeterClient(cc).Hello(ctx, &hellopb.HelloRequest{Text: "world"})
		if err != nil {
			fmt.Printf("%s: %s\n", path, status.Code(err))
		} else {
			fmt.Printf("%s: %s (the server saw %s)\n", path, reply.GetText(), reply.GetCallerId())
		}
		cc.Close()
		src.Close()
	}
	// Output:
	// /caller: hello, world (the server saw spiffe://example.org/caller)
	// /stranger: PermissionDenied
}
