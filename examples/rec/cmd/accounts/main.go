// Command accounts serves the REC platform's accounts service in the mesh; see
// package github.com/gridmesh/gridmesh/examples/rec/accounts.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/gridmesh/gridmesh/examples/rec/accounts"
	"github.com/gridmesh/gridmesh/examples/rec/recdb"
	"github.com/gridmesh/gridmesh/examples/rec/recmesh"
	"github.com/gridmesh/gridmesh/examples/rec/recpb"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "accounts:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	listen := flag.String("listen", "127.0.0.1:7102", "address to serve gRPC on")
	dbPath := flag.String("db", "accounts.db", "SQLite database file (created if missing)")
	admin := flag.String("admin", "", "loopback host:port for the mesh admin endpoint (/status, /identity, /targets, /config, /denials, /events); empty: off")
	controlPlane := flag.String("control-plane", "", "meshd's xDS address: register with it and take mTLS and RBAC from it (xds:///name targets need it); empty: static targets only")
	flag.Parse()

	log := recmesh.Logger("accounts")
	node, err := recmesh.Start(ctx, recmesh.Config{Name: "accounts", Admin: *admin, Telemetry: true, ControlPlane: *controlPlane, Logger: log})
	if err != nil {
		return err
	}
	defer node.Close()
	db, err := recdb.Open(ctx, *dbPath, accounts.Schema...)
	if err != nil {
		return err
	}
	defer db.Close()
	srv, err := node.NewServer(&recpb.Accounts_ServiceDesc, db)
	if err != nil {
		return err
	}
	defer srv.Close()
	recpb.RegisterAccountsServer(srv, accounts.New(db))
	return node.Serve(ctx, srv, *listen)
}
