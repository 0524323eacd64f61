package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/xds"

	"github.com/gridmesh/gridmesh/controlplane/registration"
	"github.com/gridmesh/gridmesh/internal/admin"
	"github.com/gridmesh/gridmesh/internal/meshtls"
	"github.com/gridmesh/gridmesh/internal/xdsbootstrap"
	"github.com/gridmesh/gridmesh/internal/xdscert"
	"github.com/gridmesh/gridmesh/internal/xdsstatus"
)

// xdsConfig is the control-plane part of the server and dial configs.
type xdsConfig struct {
	controlPlane    string      // gRPC target for the addresses below (xdsbootstrap.ReplicasTarget)
	controlPlanes   []string    // as given to WithControlPlane
	controlPlaneErr error       // why they are not a target
	cpID            spiffeid.ID // WithControlPlaneID; zero: spiffe://<own trust domain>/meshd
	cpPlaintext     bool        // WithInsecurePlaintextControlPlaneForLocalDebugging
	service         string      // servers: the service name clients dial as xds:///<service>
	version         string
	advertise       string
	noRegistration  bool // WithoutControlPlaneRegistration
}

// WithControlPlane makes the mesh take its configuration from meshd at
// addrs, with no bootstrap file: one address (host:port, meshd's default
// is 127.0.0.1:15010, or a gRPC target such as dns:///meshd:15010 whose
// records are replicas), or several replicas' host:port addresses.
//
// With several replicas (or a DNS name with several records), the xDS
// connection goes to one of them, in an order shuffled per connection so
// that a fleet spreads over the replicas; when that replica fails, it
// moves to the next that answers and subscribes again there, while calls
// go on with the config already received. A server's registration goes to
// the replica that last answered and moves on the same way. Replicas must
// share their registrations (meshd serve -consul); a server warns when a
// replica says it keeps them in memory. WithControlPlane refuses, when the
// constructor runs, an empty list, an address given twice, or, among
// several, one that is not host:port.
//
// The connection to meshd, xDS and registration alike, is mTLS: the mesh
// presents this process's SVID (WithIdentity; rotations apply to the next
// connection, and meshd recycles connections before certificates expire)
// and accepts only meshd's SPIFFE ID, spiffe://<own trust domain>/meshd
// unless WithControlPlaneID names another. A server's listener is named
// after its SPIFFE ID, and meshd sends it only to that identity.
// WithInsecurePlaintextControlPlaneForLocalDebugging turns this off.
//
// For Dial, xds:///<service> targets get routes, weighted splits, retries,
// timeouts, fault injection, circuit breaking, balancing and the endpoints'
// SPIFFE IDs from meshd, and mTLS from this process's identity. In this mode
// the control plane owns traffic policy: grpc-go applies the route's retry
// policy, unless WithResilience or WithResiliencePolicy is given, which
// replaces it with the mesh's own resilience layer (code wins over the
// config source). WithBalancer is refused for xds:/// targets: their
// balancer is the cluster's. Dial refuses WithControlPlane for any other
// target.
//
// For NewServer (with WithXDSService), the server is an xDS server: it
// stays NOT_SERVING until meshd sends its listener, then enforces the mTLS
// and RBAC meshd configures, and Serve registers its endpoint with meshd
// and keeps it registered until draining starts (unless
// WithoutControlPlaneRegistration).
func WithControlPlane(addrs ...string) Option {
	x := xdsConfig{controlPlanes: append([]string(nil), addrs...)}
	x.controlPlane, x.controlPlaneErr = xdsbootstrap.ReplicasTarget(addrs)
	if x.controlPlaneErr != nil {
		x.controlPlaneErr = fmt.Errorf("mesh: WithControlPlane: %w", x.controlPlaneErr)
		x.controlPlane = "" // the error stands for it
	}
	set := func(c *xdsConfig) {
		c.controlPlane, c.controlPlanes, c.controlPlaneErr = x.controlPlane, x.controlPlanes, x.controlPlaneErr
	}
	return scoped{
		name:   "WithControlPlane",
		scope:  forNewServer | forDial | forHTTPClient,
		server: func(c *serverConfig) { set(&c.xds) },
		dial:   func(c *dialConfig) { set(&c.xds) },
	}
}

// WithXDSService names the service a server in xDS mode registers under
// (clients dial xds:///<service>) and, optionally, its version ("" for
// none), which meshd's weighted splits refer to.
func WithXDSService(service, version string) ServerOption {
	return serverOnly("WithXDSService", forNewServer, func(c *serverConfig) {
		c.xds.service, c.xds.version = service, version
	})
}

// WithAdvertiseAddress sets the address a server in xDS mode registers for
// clients to connect to, when it differs from the listener's (a server
// listening on 0.0.0.0:8443). Default: the listener's address.
func WithAdvertiseAddress(hostport string) ServerOption {
	return serverOnly("WithAdvertiseAddress", forNewServer, func(c *serverConfig) { c.xds.advertise = hostport })
}

// WithoutControlPlaneRegistration makes Serve of a server in xDS mode leave
// its endpoint to meshd's other sources instead of registering it: on
// Kubernetes (meshd serve -kubernetes reads the Service's EndpointSlices,
// which every meshd replica shares) or where Consul already lists it. The
// server still takes its listener, mTLS and RBAC from meshd. Default:
// Serve registers the endpoint and keeps it registered until draining
// starts.
func WithoutControlPlaneRegistration() ServerOption {
	return serverOnly("WithoutControlPlaneRegistration", forNewServer, func(c *serverConfig) { c.xds.noRegistration = true })
}

// xdsDialOptions returns the options that resolve target through meshd, or
// nil when target is not xds:/// or no control plane is set.
func (c *dialConfig) xdsDialOptions(target string, creds credentials.TransportCredentials, tel *meshTelemetry) ([]grpc.DialOption, func(), error) {
	if !strings.HasPrefix(target, "xds:") {
		return nil, nil, nil
	}
	if c.xds.controlPlane == "" {
		return nil, nil, fmt.Errorf("target %s needs a control plane: pass mesh.WithControlPlane(\"127.0.0.1:15010\")", target)
	}
	cp, releaseCert := xdscert.Register(c.identity)
	rec := tel.recordXDS(target, false)
	bc, releaseCreds, err := c.xds.bootstrap(c.identity)
	if err != nil {
		releaseCert()
		rec.Close()
		return nil, nil, err
	}
	release := func() { releaseCert(); releaseCreds(); rec.Close() }
	bc.CertProvider, bc.Recorder, bc.WrapCredentials = cp, rec, meshtls.CheckPeerSANs
	bc.Metrics = tel.xdsMetrics()
	opts, err := xdsbootstrap.DialOptions(bc, creds)
	if err != nil {
		release()
		return nil, nil, err
	}
	return opts, release, nil
}

// recordXDS returns the recorder of the xDS client of scope (a dial
// target, or a server's SPIFFE ID): its updates are logged and counted,
// and the admin endpoint shows what it holds (config, CSDS, endpoints).
func (t *meshTelemetry) recordXDS(scope string, server bool) *xdsstatus.Recorder {
	rec := xdsstatus.New(func(u xdsstatus.Update) { t.xdsUpdate(scope, u) })
	t.xds = rec
	if server {
		t.policies = func() []admin.Policy { return serverXDSPolicies(scope, rec) }
	} else {
		t.policies = func() []admin.Policy { return clientXDSPolicies(scope, rec) }
	}
	t.balancer = func() string {
		var parts []string
		for _, c := range rec.Clusters() {
			p := c.Name + "=" + c.Balancer
			if c.OutlierDetection {
				p += "+outlier_detection"
			}
			parts = append(parts, p)
		}
		return strings.Join(parts, " ")
	}
	// grpc-go's xDS circuit breaker is a limit on concurrent requests per
	// cluster, not a state machine: show the limit.
	t.breaker = func() string {
		var parts []string
		for _, c := range rec.Clusters() {
			p := fmt.Sprintf("%s=max_requests %d", c.Name, c.MaxRequests)
			if !c.MaxRequestsSet {
				p += " (default)"
			}
			parts = append(parts, p)
		}
		return strings.Join(parts, " ")
	}
	t.endpoints = func() []admin.Endpoint {
		var out []admin.Endpoint
		for _, e := range rec.Endpoints() {
			out = append(out, admin.Endpoint{Cluster: e.Cluster, Address: e.Address, Identity: strings.Join(e.IDs, " "),
				State: e.Health, Weight: e.Weight})
		}
		return out
	}
	return rec
}

// firstNACK reports whether u refuses something new: a control plane that
// re-sends a refused version at once (go-control-plane does) is logged
// once, not in a loop.
func (t *meshTelemetry) firstNACK(u xdsstatus.Update) bool {
	key := u.Version + "\x00" + u.Detail
	t.xdsMu.Lock()
	defer t.xdsMu.Unlock()
	if t.lastNACK == nil {
		t.lastNACK = map[string]string{}
	}
	if t.lastNACK[u.TypeURL] == key {
		return false
	}
	t.lastNACK[u.TypeURL] = key
	return true
}

// clientXDSPolicies are the routes and clusters an xDS channel applies, as
// grpc-go applies them.
func clientXDSPolicies(scope string, rec *xdsstatus.Recorder) []admin.Policy {
	var ps []admin.Policy
	for _, r := range rec.Routes() {
		name := r.Name
		if name == "" {
			name = "-"
		}
		d := r.Match + " → " + r.Action
		if r.Unreachable {
			d += " (no call reaches it: a route above matches every call)"
		}
		ps = append(ps, admin.Policy{Kind: "route", Scope: scope, Name: name, Source: "xds", Detail: d})
	}
	for _, c := range rec.Clusters() {
		d := fmt.Sprintf("%s; max_requests %d", c.Balancer, c.MaxRequests)
		if c.OutlierDetection {
			d += "; outlier detection"
		}
		ps = append(ps, admin.Policy{Kind: "cluster", Scope: scope, Name: c.Name, Source: "xds", Detail: d})
	}
	if len(ps) == 0 {
		ps = append(ps, admin.Policy{Kind: "route", Scope: scope, Name: "-", Source: "xds", Detail: "no routes accepted from the control plane yet"})
	}
	return ps
}

// serverXDSPolicies is the RBAC an xDS server's listener enforces.
func serverXDSPolicies(scope string, rec *xdsstatus.Recorder) []admin.Policy {
	var ps []admin.Policy
	for _, r := range rec.ServerRBAC() {
		ps = append(ps, admin.Policy{Kind: "authz", Scope: scope, Name: "rbac", Source: "xds",
			Detail: r + " (enforced by grpc-go before the mesh's own rules)"})
	}
	if len(ps) == 0 {
		ps = append(ps, admin.Policy{Kind: "authz", Scope: scope, Name: "rbac", Source: "xds",
			Detail: "no RBAC from the control plane: every caller mTLS accepts reaches the mesh's own rules"})
	}
	return ps
}

// xdsUpdate logs a NACK and counts the update, and each field of an
// accepted resource that grpc-go ignores (once per resource and field).
func (t *meshTelemetry) xdsUpdate(scope string, u xdsstatus.Update) {
	if u.NACK && t.firstNACK(u) {
		t.log().Warn("refused config from the control plane (NACK); the last accepted version stays in force",
			"scope", scope, "type", u.TypeURL, "version", u.Version, "resources", u.Rejected, "reason", u.Detail)
	}
	if !t.recording() {
		return
	}
	t.rec.XDSUpdate(scope, u.TypeURL, u.Version, u.NACK, u.Detail)
	typeName := u.TypeURL[strings.LastIndex(u.TypeURL, ".")+1:]
	for _, r := range u.Accepted {
		for _, f := range admin.UnsupportedFields(r.Message) {
			key := u.TypeURL + " " + r.Name + " " + f
			t.xdsMu.Lock()
			seen := t.unsupportedSeen[key]
			if t.unsupportedSeen == nil {
				t.unsupportedSeen = map[string]bool{}
			}
			t.unsupportedSeen[key] = true
			t.xdsMu.Unlock()
			if !seen {
				t.rec.UnsupportedField("xds", scope, typeName+" "+r.Name, f)
			}
		}
	}
}

// releaseOnShutdown calls release once cc is closed.
func releaseOnShutdown(cc *grpc.ClientConn, release func()) {
	go func() {
		defer release()
		for {
			st := cc.GetState()
			if st == connectivity.Shutdown {
				return
			}
			cc.WaitForStateChange(context.Background(), st)
		}
	}()
}

// newXDSServer builds the xDS-configured gRPC server. opts must not carry
// credentials: the bootstrap's xDS credentials replace them, with creds as
// the fallback for listeners meshd sends without security config.
func (c *serverConfig) newXDSServer(creds credentials.TransportCredentials, opts []grpc.ServerOption, tel *meshTelemetry, id spiffeid.ID) (grpcServer, func(), error) {
	if c.xds.service == "" {
		return nil, nil, errors.New("mesh: a server with WithControlPlane needs its service name: pass mesh.WithXDSService(\"trading\", \"v1\")")
	}
	cp, releaseCert := xdscert.Register(c.identity)
	rec := tel.recordXDS(id.String(), true)
	bc, releaseCreds, err := c.xds.bootstrap(c.identity)
	if err != nil {
		releaseCert()
		rec.Close()
		return nil, nil, err
	}
	release := func() { releaseCert(); releaseCreds(); rec.Close() }
	bc.CertProvider, bc.Cluster, bc.Recorder, bc.WrapCredentials = cp, c.xds.service, rec, meshtls.CheckPeerSANs
	// meshd sends this server's listener, and its RBAC, only to a stream
	// authenticated as id: the listener's name carries it.
	bc.ServerIdentity = id.String()
	sopts, err := xdsbootstrap.ServerOptions(bc, creds)
	if err != nil {
		release()
		return nil, nil, fmt.Errorf("mesh: %w", err)
	}
	srv, err := xds.NewGRPCServer(append(sopts, opts...)...)
	if err != nil {
		release()
		return nil, nil, fmt.Errorf("mesh: xDS server: %w", err)
	}
	return srv, release, nil
}

// heartbeat registers the server's endpoint with meshd until ctx ends.
func (s *Server) heartbeat(ctx context.Context, listenAddr string) (stop func()) {
	if s.xds.controlPlane == "" || s.xds.noRegistration {
		return func() {}
	}
	addr := s.xds.advertise
	if addr == "" {
		addr = listenAddr
	}
	reg := registration.Registration{
		Service: s.xds.service, Version: s.xds.version, Address: addr, ListenAddress: listenAddr,
		SPIFFEID: s.id.String(), TTL: registration.Duration(15 * time.Second),
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		rc, err := s.xds.registrationClient(s.identity)
		if err != nil {
			s.logger.Warn("registering with meshd", "error", err)
			return
		}
		defer rc.Close()
		if len(s.xds.controlPlanes) > 1 {
			var once sync.Once
			rc.OnAnswer(func(addr, store string) {
				if store == registration.StoreMemory {
					once.Do(func() {
						s.logger.Error("meshd keeps registrations in its memory, but this server names several control-plane replicas: the others do not know this server and their clients will not reach it; run every meshd with -consul so replicas share registrations", "meshd", addr, "control_planes", s.xds.controlPlanes)
					})
				}
			})
		}
		err = rc.Heartbeat(ctx, reg, func(err error) {
			s.logger.Warn("renewing the registration with meshd", "error", err)
		})
		if err != nil {
			s.logger.Warn("deregistering from meshd", "error", err)
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// grpcServer is what Server needs of *grpc.Server and *xds.GRPCServer.
type grpcServer interface {
	grpc.ServiceRegistrar
	GetServiceInfo() map[string]grpc.ServiceInfo
	Serve(net.Listener) error
	Stop()
	GracefulStop()
}
