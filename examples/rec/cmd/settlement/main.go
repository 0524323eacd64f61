// Command settlement serves the REC platform's settlement service and
// applies every trade of the trading journal once (see package settlement).
// Run one per database.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/gridmesh/gridmesh/examples/rec/policy"
	"github.com/gridmesh/gridmesh/examples/rec/recdb"
	"github.com/gridmesh/gridmesh/examples/rec/recmesh"
	"github.com/gridmesh/gridmesh/examples/rec/recpb"
	"github.com/gridmesh/gridmesh/examples/rec/settlement"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "settlement:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	listen := flag.String("listen", "127.0.0.1:7104", "address to serve gRPC on")
	dbPath := flag.String("db", "settlement.db", "SQLite database file (created if missing)")
	tradingAddr := flag.String("trading", "127.0.0.1:7103", "trading instances: host:port[,...] or a target")
	accounts := flag.String("accounts", "127.0.0.1:7102", "accounts service: host:port[,...] or a target")
	registry := flag.String("registry", "127.0.0.1:7101", "registry service: host:port[,...] or a target")
	admin := flag.String("admin", "", "loopback host:port for the mesh admin endpoint (/status, /identity, /targets, /config, /denials, /events); empty: off")
	controlPlane := flag.String("control-plane", "", "meshd's xDS address: register with it and take mTLS and RBAC from it (xds:///name targets need it); empty: static targets only")
	flag.Parse()

	log := recmesh.Logger("settlement")
	node, err := recmesh.Start(ctx, recmesh.Config{Name: "settlement", Admin: *admin, Telemetry: true, ControlPlane: *controlPlane, Logger: log})
	if err != nil {
		return err
	}
	defer node.Close()
	db, err := recdb.Open(ctx, *dbPath, settlement.Schema...)
	if err != nil {
		return err
	}
	defer db.Close()
	var conns []interface{ Close() error }
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	tc, err := node.Dial(ctx, *tradingAddr, policy.Trading, recmesh.RoundRobin)
	if err != nil {
		return err
	}
	conns = append(conns, tc)
	ac, err := node.Dial(ctx, *accounts, policy.Accounts, recmesh.RoundRobin)
	if err != nil {
		return err
	}
	conns = append(conns, ac)
	rc, err := node.Dial(ctx, *registry, policy.Registry, recmesh.RoundRobin)
	if err != nil {
		return err
	}
	conns = append(conns, rc)

	s := settlement.New(db, settlement.Config{
		Trading:  recpb.NewTradingClient(tc),
		Accounts: recpb.NewAccountsClient(ac),
		Registry: recpb.NewRegistryClient(rc),
		Logger:   log,
	})
	srv, err := node.NewServer(&recpb.Settlement_ServiceDesc, db)
	if err != nil {
		return err
	}
	defer srv.Close()
	recpb.RegisterSettlementServer(srv, s)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return node.Serve(ctx, srv, *listen) })
	g.Go(func() error {
		if err := s.Run(ctx); !errors.Is(err, context.Canceled) {
			return err
		}
		return nil
	})
	return g.Wait()
}
