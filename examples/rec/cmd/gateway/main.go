// Command gateway serves the REC platform's HTTP JSON API (package gateway)
// with the mesh HTTP server, which authorizes callers by SPIFFE ID
// (policy.GatewayRoutes), and calls the services over the mesh.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/gridmesh/gridmesh/examples/rec/gateway"
	"github.com/gridmesh/gridmesh/examples/rec/policy"
	"github.com/gridmesh/gridmesh/examples/rec/recdb"
	"github.com/gridmesh/gridmesh/examples/rec/recmesh"
	"github.com/gridmesh/gridmesh/examples/rec/recpb"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	listen := flag.String("listen", "127.0.0.1:8443", "address to serve HTTPS (mesh mTLS) on")
	dbPath := flag.String("db", "gateway.db", "SQLite database for HTTP idempotency keys (created if missing)")
	tradingAddr := flag.String("trading", "127.0.0.1:7103", "trading instances: host:port[,...] or a target")
	accounts := flag.String("accounts", "127.0.0.1:7102", "accounts service: host:port[,...] or a target")
	registry := flag.String("registry", "127.0.0.1:7101", "registry service: host:port[,...] or a target")
	settlementAddr := flag.String("settlement", "127.0.0.1:7104", "settlement service: host:port[,...] or a target")
	admin := flag.String("admin", "", "loopback host:port for the mesh admin endpoint (/status, /identity, /targets, /config, /denials, /events); empty: off")
	controlPlane := flag.String("control-plane", "", "meshd's xDS address: register with it and take mTLS and RBAC from it (xds:///name targets need it); empty: static targets only")
	flag.Parse()

	log := recmesh.Logger("gateway")
	node, err := recmesh.Start(ctx, recmesh.Config{Name: "gateway", Admin: *admin, Telemetry: true, ControlPlane: *controlPlane, Logger: log})
	if err != nil {
		return err
	}
	defer node.Close()
	db, err := recdb.Open(ctx, *dbPath)
	if err != nil {
		return err
	}
	defer db.Close()

	var c gateway.Clients
	for _, d := range []struct {
		addr, workload string
		set            func(*grpc.ClientConn)
	}{
		{*tradingAddr, policy.Trading, func(cc *grpc.ClientConn) { c.Trading = recpb.NewTradingClient(cc) }},
		{*accounts, policy.Accounts, func(cc *grpc.ClientConn) { c.Accounts = recpb.NewAccountsClient(cc) }},
		{*registry, policy.Registry, func(cc *grpc.ClientConn) { c.Registry = recpb.NewRegistryClient(cc) }},
		{*settlementAddr, policy.Settlement, func(cc *grpc.ClientConn) { c.Settlement = recpb.NewSettlementClient(cc) }},
	} {
		bal := recmesh.RoundRobin
		if d.workload == policy.Trading {
			bal = recmesh.RingHash // each market to one instance
		}
		cc, err := node.Dial(ctx, d.addr, d.workload, bal)
		if err != nil {
			return err
		}
		defer cc.Close()
		d.set(cc)
	}

	authz, err := node.GatewayAuthorizer(ctx) // policy.GatewayAuthorizer, or Consul intentions on Consul
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/", gateway.Handler(c, recdb.NewStore(db, 0)))
	mux.Handle("GET /debug/mesh", node.DebugHandler())
	opts := []mesh.ServerOption{
		mesh.WithAuthorizer(authz),
		mesh.WithDenialHook(func(d *security.DeniedError) {
			log.Warn("denied", "caller", d.Caller.String(), "target", d.Target, "rule", d.Rule)
		}),
		mesh.WithDrainTimeout(5 * time.Second),
	}
	for _, o := range node.Options() {
		opts = append(opts, o)
	}
	srv, err := mesh.NewHTTPServer(mux, opts...)
	if err != nil {
		return err
	}
	defer srv.Close()
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Printf("gateway: serving as %s on https://%s\n", srv.ID(), lis.Addr())
	return srv.Serve(ctx, lis)
}
