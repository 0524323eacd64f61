// Command registry serves the REC platform's registry service in the mesh; see
// package github.com/gridmesh/gridmesh/examples/rec/registry.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/gridmesh/gridmesh/examples/rec/recdb"
	"github.com/gridmesh/gridmesh/examples/rec/recmesh"
	"github.com/gridmesh/gridmesh/examples/rec/recpb"
	"github.com/gridmesh/gridmesh/examples/rec/registry"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "registry:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	listen := flag.String("listen", "127.0.0.1:7101", "address to serve gRPC on")
	dbPath := flag.String("db", "registry.db", "SQLite database file (created if missing)")
	admin := flag.String("admin", "", "loopback host:port for the mesh admin endpoint (/status, /identity, /targets, /config, /denials, /events); empty: off")
	controlPlane := flag.String("control-plane", "", "meshd's xDS address: register with it and take mTLS and RBAC from it (xds:///name targets need it); empty: static targets only")
	flag.Parse()

	log := recmesh.Logger("registry")
	node, err := recmesh.Start(ctx, recmesh.Config{Name: "registry", Admin: *admin, Telemetry: true, ControlPlane: *controlPlane, Logger: log})
	if err != nil {
		return err
	}
	defer node.Close()
	db, err := recdb.Open(ctx, *dbPath, registry.Schema...)
	if err != nil {
		return err
	}
	defer db.Close()
	srv, err := node.NewServer(&recpb.Registry_ServiceDesc, db)
	if err != nil {
		return err
	}
	defer srv.Close()
	recpb.RegisterRegistryServer(srv, registry.New(db))
	return node.Serve(ctx, srv, *listen)
}
