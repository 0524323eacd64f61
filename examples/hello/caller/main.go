// Command caller is a meshed gRPC client: it calls the greeter over mTLS,
// accepting only the greeter's SPIFFE ID, and prints both identities.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/gridmesh/gridmesh/examples/hello/hellopb"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "caller:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	target := flag.String("target", "127.0.0.1:8443", "greeter address")
	server := flag.String("server-id", "spiffe://gridmesh.dev/greeter", "SPIFFE ID the greeter must present")
	flag.Parse()
	serverID, err := spiffeid.FromString(*server)
	if err != nil {
		return fmt.Errorf("-server-id %q: %w", *server, err)
	}

	src, err := security.NewWorkloadAPISource(ctx, security.WorkloadAPIConfig{})
	if err != nil {
		return err
	}
	defer src.Close()

	cc, err := mesh.Dial(ctx, *target, mesh.WithIdentity(src), mesh.WithServerID(serverID))
	if err != nil {
		return err
	}
	defer cc.Close()
	reply, err := hellopb.NewGreeterClient(cc).Hello(ctx, &hellopb.HelloRequest{Text: "hello over mTLS"})
	if err != nil {
		return err
	}
	fmt.Printf("caller: %s\n", reply.GetText())
	fmt.Printf("caller: my identity, as the greeter verified it: %s\n", reply.GetCallerId())
	fmt.Printf("caller: the greeter's identity:                   %s\n", reply.GetGreeterId())
	return nil
}
