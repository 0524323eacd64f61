// Package recmesh wires a REC service into the mesh with public gridmesh
// API only: its identity from the SPIFFE Workload API, OpenTelemetry from
// the standard OTEL_* environment, a mesh server that enforces the
// authorization matrix (package policy) and answers repeated idempotency
// keys from the service's own database, clients with discovery, balancing
// and resilience, and the mesh admin endpoint.
//
// On Consul (Config.Consul, or CONSUL_HTTP_ADDR in the environment) the
// same process takes its identity from Consul's Connect CA, authorizes
// callers by Consul intentions (which platform.ConsulIntentions generates
// from the same matrix), registers its servers in Consul's catalog with a
// TTL health check, and finds the others through consul:///<service>.
//
//	node, err := recmesh.Start(ctx, recmesh.Config{Name: "registry", Admin: "127.0.0.1:15001"})
//	defer node.Close()
//	srv, err := node.NewServer(&recpb.Registry_ServiceDesc, db)
//	conn, err := node.Dial(ctx, "127.0.0.1:7001,127.0.0.1:7002", policy.Trading, recmesh.RingHash)
package recmesh

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/examples/rec/policy"
	"github.com/gridmesh/gridmesh/examples/rec/recdb"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/resilience"
	"github.com/gridmesh/gridmesh/security"
	"github.com/gridmesh/gridmesh/telemetry"
)

// MarketHeader is the request metadata key whose value (a market key,
// "solar:2024") the trading clients hash to pick an instance.
const MarketHeader = "x-rec-market"

// Config says how a process joins the mesh.
type Config struct {
	// Name is the workload name: the process takes the SVID
	// spiffe://<trust domain>/<Name> (policy.ID).
	Name string
	// Socket is the Workload API address ("unix:///path"). Default: the
	// SPIFFE_ENDPOINT_SOCKET environment variable.
	Socket string
	// Admin is the loopback host:port of the mesh admin endpoint; empty
	// turns it off.
	Admin string
	// Telemetry turns on OpenTelemetry exporters from the OTEL_*
	// environment (telemetry.FromEnv). Services set it; in-process clients
	// (tests, the demo's operator) leave it off.
	Telemetry bool
	// ControlPlane is meshd's xDS address. With it, servers register with
	// meshd as the xDS service Name and take their mTLS and RBAC from it,
	// and xds:///<service> targets get endpoints, balancing and policy
	// from it. Empty: static targets and in-code policy only.
	ControlPlane string
	// EndpointsFromPlatform keeps servers from registering with meshd when
	// meshd learns their endpoints elsewhere (meshd serve -kubernetes reads
	// their EndpointSlices): mesh.WithoutControlPlaneRegistration.
	EndpointsFromPlatform bool
	// Consul, when set, joins the mesh through this Consul agent instead
	// of the Workload API: identity from its Connect CA for the service
	// Name, authorization by Consul intentions, servers registered in its
	// catalog with a health check, consul:///<service> targets. Default:
	// api.DefaultConfig() when CONSUL_HTTP_ADDR is set and neither Socket
	// nor SPIFFE_ENDPOINT_SOCKET is (Consul's own variables:
	// CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_CACERT, ...), else none.
	Consul *api.Config
	// Logger defaults to silent.
	Logger *slog.Logger
}

// Node is one process's place in the mesh. Close it when done.
type Node struct {
	Name string
	// Src is the identity source, picked at Start (the Workload API or
	// Consul's Connect CA); Close closes it.
	Src security.Source
	// ID is the process's SPIFFE ID, TD its trust domain.
	ID  spiffeid.ID
	TD  spiffeid.TrustDomain
	Log *slog.Logger
	// Consul is the Consul client on Consul (Config.Consul), else nil.
	Consul *api.Client
	// Datacenter is the Consul datacenter, from the SVID, on Consul.
	Datacenter string

	Resilience *resilience.Client
	// Stats counts retries, breaker changes and refusals of Resilience.
	Stats      *Stats
	admin      *mesh.Admin
	cp         string
	cpNoReg    bool
	discovery  *discovery.Registry
	tel        *telemetry.Providers
	intentions *discovery.Intentions
}

// Start joins the mesh: it fetches the identity (blocking until the first
// SVID arrives or ctx ends) and sets up telemetry.
func Start(ctx context.Context, cfg Config) (_ *Node, err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := &Node{Name: cfg.Name, Log: log, cp: cfg.ControlPlane, cpNoReg: cfg.EndpointsFromPlatform}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	if cfg.Admin != "" {
		if n.admin, err = mesh.NewAdmin(cfg.Admin, log); err != nil {
			return nil, fmt.Errorf("%s: %w", cfg.Name, err)
		}
	}
	if cfg.Telemetry {
		if n.tel, err = telemetry.Setup(ctx, telemetry.FromEnv()); err != nil {
			return nil, fmt.Errorf("%s: telemetry: %w", cfg.Name, err)
		}
	}
	if cfg.Consul == nil && cfg.Socket == "" && os.Getenv("SPIFFE_ENDPOINT_SOCKET") == "" && os.Getenv("CONSUL_HTTP_ADDR") != "" {
		cfg.Consul = api.DefaultConfig()
	}
	if cfg.Consul != nil {
		if err := n.startConsul(ctx, cfg.Consul); err != nil {
			return nil, err
		}
	} else if err := n.startWorkloadAPI(ctx, cfg.Socket); err != nil {
		return nil, err
	}
	n.Stats = newStats()
	if n.Resilience, err = resilience.NewClient(Resilience(), resilience.WithObserver(n.Stats.observer())); err != nil {
		return nil, err
	}
	return n, nil
}

// startWorkloadAPI takes the node's identity from the Workload API.
func (n *Node) startWorkloadAPI(ctx context.Context, socket string) (err error) {
	var src *security.WorkloadAPISource
	if src, err = security.NewWorkloadAPISource(ctx, security.WorkloadAPIConfig{Address: socket, Logger: n.Log}); err != nil {
		return fmt.Errorf("%s: identity: %w", n.Name, err)
	}
	n.Src = src
	if n.ID, err = security.ID(n.Src); err != nil {
		return fmt.Errorf("%s: identity: %w", n.Name, err)
	}
	if want := policy.ID(n.ID.TrustDomain(), n.Name); n.Name != "" && n.ID != want {
		// A SPIRE agent may offer a process several SVIDs (entries that
		// match every process of a user); take the workload's own.
		n.Src.Close()
		n.Src = nil
		if src, err = security.NewWorkloadAPISource(ctx, security.WorkloadAPIConfig{Address: socket, ExpectedID: want, Logger: n.Log}); err != nil {
			return fmt.Errorf("%s: identity: the Workload API offered %s, not %s: %w", n.Name, n.ID, want, err)
		}
		n.Src, n.ID = src, want
	}
	n.TD = n.ID.TrustDomain()
	n.discovery, err = discovery.New(discovery.Config{TrustDomain: n.TD})
	return err
}

// startConsul takes the node's identity from the Connect CA of the Consul
// agent at cfg, and finds services in its catalog.
func (n *Node) startConsul(ctx context.Context, cfg *api.Config) (err error) {
	src, err := security.NewConsulSource(ctx, security.ConsulConfig{Service: n.Name, API: cfg, Logger: n.Log})
	if err != nil {
		return fmt.Errorf("%s: identity: %w", n.Name, err)
	}
	n.Src = src
	if n.ID, err = security.ID(src); err != nil {
		return fmt.Errorf("%s: identity: %w", n.Name, err)
	}
	n.TD = n.ID.TrustDomain()
	// Consul's IDs are spiffe://<td>/ns/<ns>/dc/<dc>/svc/<service>.
	if segs := strings.Split(n.ID.Path(), "/"); len(segs) == 7 && segs[3] == "dc" {
		n.Datacenter = segs[4]
	} else {
		return fmt.Errorf("%s: identity: %s is not a Consul service identity", n.Name, n.ID)
	}
	if n.Consul, err = api.NewClient(cfg); err != nil {
		return fmt.Errorf("%s: consul: %w", n.Name, err)
	}
	n.discovery, err = discovery.New(discovery.Config{Consul: n.Consul, TrustDomain: n.TD})
	return err
}

// PeerID is the SPIFFE ID workload presents: policy.ID on the Workload
// API, Consul's service identity on Consul.
func (n *Node) PeerID(workload string) spiffeid.ID {
	if n.Consul == nil {
		return policy.ID(n.TD, workload)
	}
	id, err := spiffeid.FromSegments(n.TD, "ns", "default", "dc", n.Datacenter, "svc", workload)
	if err != nil {
		panic(fmt.Sprintf("recmesh: workload name %q: %v", workload, err))
	}
	return id
}

// Intentions returns the Consul intentions whose destination is the node's
// service, watched from the first call until Close. Consul only.
func (n *Node) Intentions(ctx context.Context) (*discovery.Intentions, error) {
	if n.intentions != nil {
		return n.intentions, nil
	}
	in, err := n.discovery.WatchIntentions(ctx, discovery.IntentionsConfig{Service: n.Name})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", n.Name, err)
	}
	n.intentions = in
	return in, nil
}

// GatewayAuthorizer is the gateway's HTTP authorization:
// policy.GatewayAuthorizer on the Workload API, the gateway's Consul
// intentions (platform.ConsulIntentions) on Consul.
func (n *Node) GatewayAuthorizer(ctx context.Context) (security.Authorizer, error) {
	if n.Consul == nil {
		return policy.GatewayAuthorizer(n.TD)
	}
	in, err := n.Intentions(ctx)
	if err != nil {
		return nil, err
	}
	return mesh.IntentionsAuthorizer(in), nil
}

// Resilience is the platform's client policy: the mesh defaults, with more
// patient retries (a trading instance that died leaves its calls' keys in
// flight in the idempotency store, which answers ABORTED until
// recdb.StaleAfter) and a breaker that opens only on a destination-wide
// outage, not on the loss of one instance among several.
func Resilience() resilience.Config {
	p := resilience.Default()
	p.Retry = resilience.Retry{MaxAttempts: 8, InitialBackoff: 50 * time.Millisecond, MaxBackoff: time.Second, Jitter: 0.2}
	p.Budget = resilience.Budget{Ratio: 0.5, MinPerSecond: 50, Window: 10 * time.Second}
	p.Breaker = resilience.Breaker{ConsecutiveFailures: 50, FailureRate: 0.9, MinRequests: 100, Window: 10 * time.Second, OpenDelay: time.Second, HalfOpenProbes: 3}
	return resilience.Config{Source: resilience.SourceCode, Default: p}
}

// Close releases the identity source and flushes telemetry. Safe to call
// twice.
func (n *Node) Close() error {
	var errs []error
	if n.intentions != nil {
		errs = append(errs, n.intentions.Close())
	}
	if n.admin != nil {
		errs = append(errs, n.admin.Close())
		n.admin = nil
	}
	if n.Src != nil {
		errs = append(errs, n.Src.Close())
	}
	if n.tel != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		errs = append(errs, n.tel.Shutdown(ctx))
		n.tel = nil
	}
	return errors.Join(errs...)
}

// Options are the mesh options every server and client of the node shares.
func (n *Node) Options() []mesh.Option {
	opts := []mesh.Option{mesh.WithIdentity(n.Src), mesh.WithLogger(n.Log)}
	if n.admin != nil {
		opts = append(opts, mesh.WithAdmin(n.admin))
	}
	return opts
}

// NewServer returns a mesh server for the service desc: callers are
// authorized by policy.Matrix, and keyed writes are answered once, from
// db's idempotency table (db must come from recdb.Open).
func (n *Node) NewServer(desc *grpc.ServiceDesc, db *sql.DB) (*mesh.Server, error) {
	authz, err := policy.Authorizer(n.TD, desc)
	if err != nil {
		return nil, err
	}
	var consulOpts []mesh.ServerOption
	if n.Consul != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		in, err := n.Intentions(ctx)
		if err != nil {
			return nil, err
		}
		authz = mesh.IntentionsAuthorizer(in)
		// A 3s TTL check (heartbeat every second): a crashed instance is
		// out of the catalog 3s later.
		consulOpts = append(consulOpts, mesh.WithRegistration(n.discovery, discovery.Service{Name: n.Name, TTL: 3 * time.Second}))
	}
	opts := []mesh.ServerOption{
		mesh.WithAuthorizer(authz),
		mesh.WithDenialHook(func(d *security.DeniedError) {
			n.Log.Warn("denied", "caller", d.Caller.String(), "target", d.Target, "rule", d.Rule)
		}),
		mesh.WithIdempotency(recdb.NewStore(db, 0)),
		mesh.WithDrainTimeout(5 * time.Second),
		mesh.WithGRPCServerOptions(grpc.ChainUnaryInterceptor(n.logFailures)),
	}
	opts = append(opts, consulOpts...)
	if n.cp != "" {
		// meshd enforces its RBAC (generated from the same matrix, see
		// policy.MeshdConfig) in front of the authorizer above.
		opts = append(opts, mesh.WithControlPlane(n.cp), mesh.WithXDSService(n.Name, ""))
		if n.cpNoReg {
			opts = append(opts, mesh.WithoutControlPlaneRegistration())
		}
	}
	for _, o := range n.Options() {
		opts = append(opts, o)
	}
	return mesh.NewServer(opts...)
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
	target := Target(addrs)
	opts := []mesh.DialOption{
		mesh.WithServerID(n.PeerID(workload)),
		mesh.WithResilience(n.Resilience),
	}
	if strings.HasPrefix(target, "xds:") {
		// meshd says how to balance (ring hash for trading) and where the
		// endpoints are.
		opts = append(opts, mesh.WithControlPlane(n.cp))
	} else {
		opts = append(opts, mesh.WithRegistry(n.discovery), mesh.WithBalancer(bal))
	}
	for _, o := range n.Options() {
		opts = append(opts, o)
	}
	return mesh.Dial(ctx, target, opts...)
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

// Logger returns the text logger the services write to stderr, with trace
// ids on records logged inside a traced call.
func Logger(name string) *slog.Logger {
	return slog.New(telemetry.NewLogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))).With("service", name)
}

// logFailures logs calls that fail for a reason other than the caller's
// request: storage trouble, an unreachable dependency.
func (n *Node) logFailures(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	switch status.Code(err) {
	case codes.Unavailable, codes.Internal, codes.Unknown, codes.DataLoss:
		n.Log.WarnContext(ctx, "call failed", "method", info.FullMethod, "err", err)
	}
	return resp, err
}

// HTTPClient returns an HTTP client that speaks the mesh's mTLS as this
// node and accepts only a server presenting workload's SPIFFE ID. Release
// it with client.Transport.(*mesh.HTTPTransport).Close().
func (n *Node) HTTPClient(workload string) (*http.Client, error) {
	opts := []mesh.DialOption{mesh.WithServerID(n.PeerID(workload)), mesh.WithRegistry(n.discovery)}
	for _, o := range n.Options() {
		opts = append(opts, o)
	}
	c, err := mesh.HTTPClient(opts...)
	if err != nil {
		return nil, err
	}
	c.Timeout = 30 * time.Second
	return c, nil
}
