// Command trading serves one instance of the REC platform's trading
// service. Run two or more with the same -db: they share the journal, and
// clients send each market to one of them (see package trading).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/gridmesh/gridmesh/examples/rec/policy"
	"github.com/gridmesh/gridmesh/examples/rec/recdb"
	"github.com/gridmesh/gridmesh/examples/rec/recmesh"
	"github.com/gridmesh/gridmesh/examples/rec/recpb"
	"github.com/gridmesh/gridmesh/examples/rec/trading"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "trading:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	listen := flag.String("listen", "127.0.0.1:7103", "address to serve gRPC on")
	dbPath := flag.String("db", "trading.db", "the journal shared by every trading instance (SQLite, created if missing)")
	instance := flag.String("instance", "", "this instance's name (default: the listen address)")
	accounts := flag.String("accounts", "127.0.0.1:7102", "accounts service: host:port[,...] or a target like consul:///accounts")
	registry := flag.String("registry", "127.0.0.1:7101", "registry service: host:port[,...] or a target")
	reconcileAfter := flag.Duration("reconcile-after", time.Minute, "release holds this old whose order never reached the journal (0: never)")
	admin := flag.String("admin", "", "loopback host:port for the mesh admin endpoint (/status, /identity, /targets, /config, /denials, /events); empty: off")
	controlPlane := flag.String("control-plane", "", "meshd's xDS address: register with it and take mTLS and RBAC from it (xds:///name targets need it); empty: static targets only")
	fromPlatform := flag.Bool("endpoints-from-platform", false, "with -control-plane: do not register with meshd, which lists this server from elsewhere (Kubernetes EndpointSlices)")
	flag.Parse()
	if *instance == "" {
		*instance = *listen
	}

	log := recmesh.Logger("trading").With("instance", *instance)
	node, err := recmesh.Start(ctx, recmesh.Config{Name: "trading", Admin: *admin, Telemetry: true, ControlPlane: *controlPlane, EndpointsFromPlatform: *fromPlatform, Logger: log})
	if err != nil {
		return err
	}
	defer node.Close()
	db, err := recdb.Open(ctx, *dbPath, trading.Schema...)
	if err != nil {
		return err
	}
	defer db.Close()
	ac, err := node.Dial(ctx, *accounts, policy.Accounts, recmesh.RoundRobin)
	if err != nil {
		return err
	}
	defer ac.Close()
	rc, err := node.Dial(ctx, *registry, policy.Registry, recmesh.RoundRobin)
	if err != nil {
		return err
	}
	defer rc.Close()

	srv, err := node.NewServer(&recpb.Trading_ServiceDesc, db)
	if err != nil {
		return err
	}
	defer srv.Close()
	t := trading.New(db, trading.Config{
		Instance: *instance,
		Accounts: recpb.NewAccountsClient(ac),
		Registry: recpb.NewRegistryClient(rc),
		Logger:   log,
	})
	recpb.RegisterTradingServer(srv, t)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return node.Serve(ctx, srv, *listen) })
	if *reconcileAfter > 0 {
		g.Go(func() error {
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(*reconcileAfter / 4):
				}
				if _, err := t.Reconcile(ctx, *reconcileAfter); err != nil && ctx.Err() == nil {
					log.Warn("reconciling holds", "err", err)
				}
			}
		})
	}
	return g.Wait()
}
