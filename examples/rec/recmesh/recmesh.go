// Package recmesh wires a REC service into the mesh with public gridmesh
// API only: its identity from the SPIFFE Workload API, a mesh server that
// enforces the authorization matrix (package policy) and answers repeated
// idempotency keys from the service's own database, and clients with
// discovery and resilience.
//
//	node, err := recmesh.Start(ctx, "registry", logger)
//	defer node.Close()
//	srv, err := node.NewServer(&recpb.Registry_ServiceDesc, db)
//	conn, err := node.Dial(ctx, "127.0.0.1:7001,127.0.0.1:7002", policy.Trading, ringHash)
package recmesh

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/examples/rec/policy"
	"github.com/gridmesh/gridmesh/examples/rec/recdb"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/resilience"
	"github.com/gridmesh/gridmesh/resilience/idempotency"
	"github.com/gridmesh/gridmesh/security"
)

// MarketHeader is the request metadata key whose value (a market key,
// "solar:2024") the trading clients hash to pick an instance.
const MarketHeader = "x-rec-market"

// Node is one service process's place in the mesh. Close it when done.
type Node struct {
	Name string
	Src  *security.WorkloadAPISource
	// ID is the process's SPIFFE ID, TD its trust domain.
	ID  spiffeid.ID
	TD  spiffeid.TrustDomain
	Log *slog.Logger

	Resilience *resilience.Client
	// Stats counts retries, breaker changes and refusals of Resilience.
	Stats     *Stats
	discovery *discovery.Registry
}

// Start fetches the identity from SPIFFE_ENDPOINT_SOCKET (a SPIRE agent, or
// `meshd dev`); it blocks until the first SVID arrives or ctx ends.
func Start(ctx context.Context, name string, log *slog.Logger) (*Node, error) {
	return StartAt(ctx, name, "", log)
}

// StartAt is Start with the Workload API at address ("unix:///path"); an
// empty address means SPIFFE_ENDPOINT_SOCKET.
func StartAt(ctx context.Context, name, address string, log *slog.Logger) (*Node, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	src, err := security.NewWorkloadAPISource(ctx, security.WorkloadAPIConfig{Address: address, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("%s: identity: %w", name, err)
	}
	id, err := security.ID(src)
	if err != nil {
		src.Close()
		return nil, fmt.Errorf("%s: identity: %w", name, err)
	}
	reg, err := discovery.New(discovery.Config{TrustDomain: id.TrustDomain()})
	if err != nil {
		src.Close()
		return nil, err
	}
	stats := newStats()
	rc, err := resilience.NewClient(Resilience(), resilience.WithObserver(stats.observer()))
	if err != nil {
		src.Close()
		return nil, err
	}
	return &Node{Name: name, Src: src, ID: id, TD: id.TrustDomain(), Log: log, Resilience: rc, Stats: stats, discovery: reg}, nil
}

// Resilience is the platform's client policy: the mesh defaults, with more
// patient retries (a trading instance that died takes its calls' keys into
// the idempotency stores, which answer ABORTED until recdb.StaleAfter) and
// a breaker that opens only on a destination-wide outage, not on the loss
// of one instance among several.
func Resilience() resilience.Config {
	p := resilience.Default()
	p.Retry = resilience.Retry{MaxAttempts: 8, InitialBackoff: 50 * time.Millisecond, MaxBackoff: time.Second, Jitter: 0.2}
	p.Budget = resilience.Budget{Ratio: 0.5, MinPerSecond: 50, Window: 10 * time.Second}
	p.Breaker = resilience.Breaker{ConsecutiveFailures: 50, FailureRate: 0.9, MinRequests: 100, Window: 10 * time.Second, OpenDelay: time.Second, HalfOpenProbes: 3}
	return resilience.Config{Source: resilience.SourceCode, Default: p}
}

// Close releases the identity source.
func (n *Node) Close() error { return n.Src.Close() }

// NewServer returns a mesh server for the service desc: callers are
// authorized by policy.Matrix, and keyed writes are answered once, from
// db's idempotency table (db must come from recdb.Open).
func (n *Node) NewServer(desc *grpc.ServiceDesc, db *sql.DB) (*mesh.Server, error) {
	ids := idempotency.NewServer(recdb.NewStore(db, 0), func(ctx context.Context) string {
		id, _ := mesh.PeerID(ctx)
		return id.String()
	})
	return mesh.NewServer(
		mesh.WithIdentity(n.Src),
		mesh.WithLogger(n.Log),
		mesh.WithAuthorizer(policy.Authorizer(n.TD, desc)),
		mesh.WithDenialHook(func(d *security.DeniedError) {
			n.Log.Warn("denied", "caller", d.Caller.String(), "target", d.Target, "rule", d.Rule)
		}),
		mesh.WithDrainTimeout(5*time.Second),
		mesh.WithGRPCServerOptions(grpc.ChainUnaryInterceptor(ids.UnaryServerInterceptor())),
	)
}

// Target turns a flag value into a gRPC target: "host:port[,host:port...]"
// becomes static:///host:port,...; anything with "://" passes as is
// (consul:///trading, xds:///trading).
func Target(s string) string {
	if strings.Contains(s, "://") {
		return s
	}
	return "static:///" + s
}

// Dial connects to the workload serving at addrs (see Target), which must
// present workload's SPIFFE ID, balancing with bal and retrying through the
// node's resilience client.
func (n *Node) Dial(ctx context.Context, addrs, workload string, bal discovery.Balancer) (*grpc.ClientConn, error) {
	sc, err := bal.ServiceConfig()
	if err != nil {
		return nil, err
	}
	return mesh.Dial(ctx, Target(addrs),
		mesh.WithIdentity(n.Src),
		mesh.WithLogger(n.Log),
		mesh.WithServerID(policy.ID(n.TD, workload)),
		mesh.WithGRPCDialOptions(
			grpc.WithResolvers(n.discovery.ResolverBuilders()...),
			grpc.WithDefaultServiceConfig(sc),
			grpc.WithDisableRetry(),
			grpc.WithChainUnaryInterceptor(n.Resilience.UnaryClientInterceptor()),
		),
	)
}

// RingHash balances trading calls by market (MarketHeader).
var RingHash = discovery.Balancer{Policy: discovery.RingHash, HashHeader: MarketHeader}

// RoundRobin spreads calls over every instance.
var RoundRobin = discovery.Balancer{Policy: discovery.RoundRobin}

// Serve listens on addr, prints "<name>: serving as <id> on <addr>" (the
// line the demo and the tests wait for) and serves srv until ctx ends.
func (n *Node) Serve(ctx context.Context, srv *mesh.Server, addr string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Printf("%s: serving as %s on %s\n", n.Name, srv.ID(), lis.Addr())
	return srv.Serve(ctx, lis)
}

// Logger returns the text logger the services write to stderr.
func Logger(name string) *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("service", name)
}
