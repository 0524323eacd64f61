package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/controlplane/registration"
)

// snapshotKey is the one snapshot-cache key every client maps to: meshd
// serves the same resources to every node (clients subscribe by name), so
// one SetSnapshot updates them all.
const snapshotKey = "gridmesh"

type sharedHash struct{}

func (sharedHash) ID(*corepb.Node) string { return snapshotKey }

// Option configures a Server.
type Option interface{ apply(*options) }

type options struct {
	logger    *slog.Logger
	grace     time.Duration
	consul    *api.Client
	mtls      *MTLSConfig
	plaintext bool
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

// WithLogger makes the server log config rejections, NACKs and client
// connections to l. Default: silent.
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(o *options) { o.logger = l })
}

// WithStartupGrace holds back the first snapshot for d after NewServer, so
// that after a restart mesh servers have time to re-register before clients
// are sent endpoint lists; clients keep their cached config meanwhile.
// Default 0 (serve as soon as there is a config).
func WithStartupGrace(d time.Duration) Option {
	return optionFunc(func(o *options) { o.grace = d })
}

// WithConsulRegistrations makes the registration API keep registrations
// in the Consul catalog, through the agent API of the agent behind client,
// instead of in this process's memory, so that replicas share them. Run a
// ConsulSource over the same Consul: the registrations reach this
// server's snapshot, and every other replica's, through it.
//
// A registration becomes a Consul service instance (ID
// "meshd-<service>-<hash of the address>", meta version, spiffe_id,
// listen_address, ttl and registered_by=meshd, weight as Consul's passing
// weight). One with a TTL gets a TTL check: a renewal writes the instance
// again, which passes the check; when a registrant stops renewing, the
// check goes critical when the TTL runs out and meshd drops the endpoint
// (it reads passing instances only), and Consul removes the instance
// ConsulDeregisterAfter later. One without a TTL stays until deregistered.
// A registration returns once the agent has it; it reaches the snapshot
// when the ConsulSource reads it back, a moment later. When Consul refuses
// or does not answer, the registration API answers 503 and stores
// nothing.
//
// Point every replica at the same Consul (the same agent, or agents of
// one Consul cluster): an instance belongs to the agent of the replica
// that took the registration; if renewals later go through another
// replica with another agent, that agent gets its own copy and the one no
// longer renewed goes critical and out of the snapshot (the ConsulSource
// keeps one instance per service and address).
//
// Default: registrations live in memory, for a single meshd.
func WithConsulRegistrations(client *api.Client) Option {
	return optionFunc(func(o *options) { o.consul = client })
}

// Server is meshd's core: it combines the config and the endpoint sources
// into snapshots and serves them over ADS. Create it with NewServer, feed
// it with SetConfig / LoadConfigFile / SetEndpoints and the registration
// API (Handler), serve xDS with Serve, and Close it. Safe for concurrent
// use.
type Server struct {
	log   *slog.Logger
	cache cachev3.SnapshotCache
	xds   serverv3.Server // the per-type services (LDS, RDS, CDS, EDS)
	ads   *adsServer      // ADS, which grpc-go uses
	reg   registrations
	tr    *transport // nil when trErr says why
	trErr error

	mu        sync.Mutex
	cfg       *Config
	cfgName   string
	sources   map[string][]Endpoint
	snap      *Snapshot
	published bool
	holding   bool
	grace     *time.Timer
	grpcs     []*grpc.Server
	https     []*http.Server
	closed    bool

	// sourceServices are services (with their policies) from dynamic
	// sources (SetSource), merged after the config's by mergedConfigLocked.
	// Guarded by mu.
	sourceServices map[string][]Service

	clientsMu sync.Mutex
	clients   map[int64]*clientState

	stats struct {
		pushes, nacks, rejections, configLoads, streams, denied atomic.Int64
	}

	stop chan struct{}
	wg   sync.WaitGroup
}

// clientState is what meshd keeps about one connected per-type xDS stream
// (LDS, RDS, CDS, EDS, served by go-control-plane; ADS streams keep theirs
// in adsStream), for Clients and the NACK guard. meshd holds one per client, so it is a slice
// rather than maps (about 300 B instead of 1.2 KB per client).
type clientState struct {
	node     string // node.id as the client sent it: not trusted, for display
	peer     string // the stream's verified SPIFFE ID ("" in plaintext)
	since    time.Time
	nacks    int
	lastNACK string
	sent     []sentType // one per type URL, in the order first sent
}

// sentType is the last response of one type sent on a stream.
type sentType struct {
	typeURL, version string
	names            []string // as requested; shared with the request
}

func (c *clientState) sentFor(typeURL string) *sentType {
	for i := range c.sent {
		if c.sent[i].typeURL == typeURL {
			return &c.sent[i]
		}
	}
	return nil
}

// ClientStatus is what one connected xDS stream was sent.
type ClientStatus struct {
	// Node is the node ID the client sent, as it sent it: anyone may send
	// any ID, so nothing is decided by it.
	Node string `json:"node"`
	// Identity is the SPIFFE ID the stream's client certificate was
	// verified as; meshd serves the stream what this identity may see.
	// Empty in plaintext mode.
	Identity string              `json:"identity,omitempty"`
	Since    time.Time           `json:"since"`
	Versions map[string]string   `json:"versions"`  // type URL → version sent
	Names    map[string][]string `json:"resources"` // type URL → resource names subscribed
	NACKs    int                 `json:"nacks"`
	LastNACK string              `json:"last_nack,omitempty"`
}

// NewServer returns a Server with no config. With registrations in memory
// (no WithConsulRegistrations) it starts the goroutine that expires them;
// Close stops it. Without WithMTLS or
// WithInsecurePlaintextForLocalDebugging, or with a source that has no
// SVID, the server builds snapshots but Serve and ServeHTTP refuse to
// start (the error says why).
func NewServer(opts ...Option) *Server {
	o := options{}
	for _, opt := range opts {
		opt.apply(&o)
	}
	if o.logger == nil {
		o.logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Server{
		log:     o.logger.With("component", "meshd"),
		sources: map[string][]Endpoint{},
		clients: map[int64]*clientState{},
		stop:    make(chan struct{}),
	}
	s.cache = cachev3.NewSnapshotCache(false, sharedHash{}, nil)
	s.xds = serverv3.NewServer(context.Background(), s.cache, s.callbacks())
	s.ads = newADSServer(s)
	s.tr, s.trErr = newTransport(&o)
	var mem *memRegistry
	if o.consul != nil {
		s.reg = &consulRegistry{s: s, client: o.consul}
	} else {
		mem = newMemRegistry(s)
		s.reg = mem
	}
	if o.grace > 0 {
		s.holding = true
		s.grace = time.AfterFunc(o.grace, func() {
			s.mu.Lock()
			s.holding = false
			s.mu.Unlock()
			_ = s.rebuild()
		})
	}
	if mem != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			mem.expireLoop(s.stop)
		}()
	}
	return s
}

// SetConfig validates cfg and, if it is good, makes it the config. A bad
// config is refused with a *ConfigError and the previous config stays in
// force. name labels the config in logs ("meshd.yaml").
func (s *Server) SetConfig(name string, cfg *Config) error {
	if problems := validate(cfg); len(problems) > 0 {
		err := &ConfigError{File: name, Problems: problems}
		s.reject(err)
		return err
	}
	s.mu.Lock()
	prev, prevName := s.cfg, s.cfgName
	s.cfg, s.cfgName = cfg, name
	err := s.rebuildLocked()
	if err != nil {
		s.cfg, s.cfgName = prev, prevName
	}
	s.mu.Unlock()
	if err != nil {
		s.reject(err)
		return err
	}
	s.stats.configLoads.Add(1)
	s.log.Info("config loaded", "name", name, "version", s.Version())
	return nil
}

// LoadConfigFile reads and applies the YAML config at path. A bad file is
// refused, logged and counted; the previous config stays in force.
func (s *Server) LoadConfigFile(path string) error {
	cfg, err := LoadConfigFile(path)
	if err != nil {
		s.reject(err)
		return err
	}
	return s.SetConfig(path, cfg)
}

func (s *Server) reject(err error) {
	s.stats.rejections.Add(1)
	s.log.Error("input refused; still serving the last good config", "err", err, "version", s.Version())
}

// SetEndpoints replaces the endpoints from one source ("consul", ...). If
// the resulting snapshot cannot be built, the previous endpoints of that
// source stay and the error is returned.
func (s *Server) SetEndpoints(source string, eps []Endpoint) error {
	s.mu.Lock()
	prev, had := s.sources[source]
	s.sources[source] = append([]Endpoint(nil), eps...)
	err := s.rebuildLocked()
	if err != nil {
		if had {
			s.sources[source] = prev
		} else {
			delete(s.sources, source)
		}
	}
	s.mu.Unlock()
	if err != nil {
		s.reject(err)
	}
	return err
}

// checkEndpointFits reports, with the HTTP status to answer, whether ep
// can join the endpoints in force: its address is not another service's,
// and a snapshot with it builds. It changes nothing.
func (s *Server) checkEndpointFits(ep Endpoint) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var eps []Endpoint
	for _, src := range s.sources {
		for _, e := range src {
			if e.Address == ep.Address && e.Service != ep.Service {
				return http.StatusConflict, fmt.Errorf("address %s is registered for service %s; deregister it there first", cutText(ep.Address), quoteValue(e.Service))
			}
			if e.Address != ep.Address {
				eps = append(eps, e)
			}
		}
	}
	if _, err := BuildSnapshot(s.cfg, append(eps, ep)); err != nil {
		return http.StatusConflict, err
	}
	return http.StatusOK, nil
}

// observeConsulRegistrations hands the registrations a ConsulSource found
// in the catalog to the registration API's list, when it keeps them in
// Consul.
func (s *Server) observeConsulRegistrations(regs []registration.Registration) {
	if r, ok := s.reg.(*consulRegistry); ok {
		r.observe(regs)
	}
}

// Snapshot returns the snapshot in force (nil before the first one).
func (s *Server) Snapshot() *Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap
}

// Version returns the version of the snapshot in force, or "".
func (s *Server) Version() string {
	if sn := s.Snapshot(); sn != nil {
		return sn.Version
	}
	return ""
}

// rebuild builds a snapshot from the current inputs and publishes it.
func (s *Server) rebuild() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rebuildLocked()
}

// rebuildLocked is rebuild with s.mu held, so that an input and the
// snapshot built from it change together.
func (s *Server) rebuildLocked() error {
	if s.closed {
		return net.ErrClosed
	}
	var eps []Endpoint
	names := make([]string, 0, len(s.sources))
	for n := range s.sources {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		eps = append(eps, s.sources[n]...)
	}
	snap, err := BuildSnapshot(s.mergedConfigLocked(), eps)
	if err != nil {
		return err
	}
	if s.snap != nil && s.snap.Version == snap.Version && s.published {
		return nil
	}
	s.snap = snap
	if s.holding {
		return nil
	}
	if err := s.ads.publish(snap); err != nil {
		return err
	}
	if err := s.cache.SetSnapshot(context.Background(), snapshotKey, snap.cacheSnapshot()); err != nil {
		return fmt.Errorf("controlplane: publish snapshot: %w", err)
	}
	s.published = true
	return nil
}

// Serve serves ADS (and the per-type xDS services) on lis until Close,
// and on HTTP/1.1 connections to the same listener the HTTP API of
// Handler, so mesh servers register at the address they get xDS from. It
// blocks and returns nil after Close.
//
// Under WithMTLS every connection is TLS 1.3 with a client SVID of meshd's
// trust domain; the client's ALPN choice tells gRPC (h2) from the HTTP/1.1
// API. Each xDS stream is served as its verified SPIFFE ID, whatever node
// ID it sends: a server-side listener (and the RBAC in it) only to the
// identity in its name (ServerListenerName), no wildcard listener
// subscriptions, and no incremental (delta) xDS, which meshd does not
// filter. Connections end gracefully after MTLSConfig.MaxConnectionAge and
// are cut Grace after their certificates expire.
func (s *Server) Serve(lis net.Listener) error {
	if s.trErr != nil {
		lis.Close()
		return s.trErr
	}
	// meshd holds thousands of mostly idle ADS connections, so what it
	// keeps per connection is what counts (bench/xds measures it).
	gopts := []grpc.ServerOption{
		// Advertise a per-connection stream limit no client reaches (grpc-go's default, unlimited, is not advertised).
		grpc.MaxConcurrentStreams(1 << 20),
		// Take the write buffer from a pool for each write instead of pinning one per connection.
		grpc.SharedWriteBuffer(true),
		// xDS requests are a few hundred bytes; reads use pooled buffers of this size (the splitter passes on bare TCP conns).
		grpc.ReadBufferSize(4 << 10),
		// Batch writes in a pooled 8 KB buffer, not the 32 KB default: responses are mostly a few KB, bigger ones still go out whole.
		grpc.WriteBufferSize(8 << 10),
		// Let clients ping as often as every 5s, even with no stream open (the default closes a connection pinging more than every 5 min).
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	}
	// Ping idle clients every 30s and drop dead ones after 10s more, so their streams and watches are freed.
	ka := keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}
	if s.tr.tls != nil {
		// The splitter has done the handshake; these creds hand grpc-go its state.
		gopts = append(gopts, grpc.Creds(handshakenCreds{}))
		// A TLS connection already holds the record it decrypted; a
		// bufio.Reader over it would pin 4 KB more per client.
		gopts = append(gopts, grpc.ReadBufferSize(0))
		ka.MaxConnectionAge, ka.MaxConnectionAgeGrace = s.tr.maxConnectionAge(), s.tr.mtls.Grace
	}
	gs := grpc.NewServer(append(gopts, grpc.KeepaliveParams(ka))...)
	discoverypb.RegisterAggregatedDiscoveryServiceServer(gs, s.ads)
	listenerservice.RegisterListenerDiscoveryServiceServer(gs, s.xds)
	routeservice.RegisterRouteDiscoveryServiceServer(gs, s.xds)
	clusterservice.RegisterClusterDiscoveryServiceServer(gs, s.xds)
	endpointservice.RegisterEndpointDiscoveryServiceServer(gs, s.xds)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return net.ErrClosed
	}
	s.grpcs = append(s.grpcs, gs)
	s.mu.Unlock()

	sp := newSplitter(lis, s.tr)
	hs := s.newHTTPServer()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); sp.run() }()
	go func() { defer wg.Done(); _ = hs.Serve(sp.http) }()
	err := gs.Serve(sp.grpc)
	sp.close()
	_ = hs.Close()
	wg.Wait()
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("controlplane: serve xDS: %w", err)
	}
	return nil
}

// Close stops serving, ends every xDS stream and stops the server's
// goroutines. Safe to call twice.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	gss := s.grpcs
	if s.grace != nil {
		s.grace.Stop()
	}
	hss := s.https
	s.mu.Unlock()
	for _, gs := range gss {
		gs.Stop()
	}
	for _, hs := range hss {
		_ = hs.Close()
	}
	close(s.stop)
	s.wg.Wait()
	return nil
}

// Stats are meshd's counters.
type Stats struct {
	// Clients is the number of connected xDS streams.
	Clients int
	// Streams counts xDS streams opened since start (clients reconnect
	// after MTLSConfig.MaxConnectionAge, with their current SVIDs).
	Streams int64
	// DeniedListeners counts listener names meshd refused to a stream
	// because they belong to another identity (see Serve).
	DeniedListeners int64
	// Pushes counts responses sent to clients.
	Pushes int64
	// NACKs counts responses clients refused.
	NACKs int64
	// Rejections counts inputs (config files, endpoint updates) refused.
	Rejections int64
	// ConfigLoads counts configs accepted.
	ConfigLoads int64
	// Version is the snapshot version in force.
	Version string
	// Registered is the number of endpoints from the registration API
	// (with registrations in Consul: those the ConsulSource last read).
	Registered int
	// RegistrationStore is where the registration API keeps
	// registrations: StoreMemory or StoreConsul.
	RegistrationStore string
	// Holding is true during the startup grace (WithStartupGrace): the
	// snapshot is built but not yet served.
	Holding bool
}

// Stats returns the current counters.
func (s *Server) Stats() Stats {
	s.clientsMu.Lock()
	n := len(s.clients)
	s.clientsMu.Unlock()
	n += s.ads.count()
	s.mu.Lock()
	holding := s.holding
	s.mu.Unlock()
	return Stats{
		Holding:         holding,
		Clients:         n,
		Pushes:          s.stats.pushes.Load(),
		Streams:         s.stats.streams.Load(),
		DeniedListeners: s.stats.denied.Load(),
		NACKs:           s.stats.nacks.Load(),
		Rejections:      s.stats.rejections.Load(),
		ConfigLoads:     s.stats.configLoads.Load(),
		Version:         s.Version(),
		Registered:      s.reg.len(),

		RegistrationStore: s.reg.store(),
	}
}

// Clients returns, per connected stream, what it subscribed to and was
// sent (on ADS, also the version it said it had when it came from another
// replica). The result is a copy.
func (s *Server) Clients() []ClientStatus {
	out := s.ads.clients()
	s.clientsMu.Lock()
	defer s.clientsMu.Unlock()
	for _, c := range s.clients {
		cs := ClientStatus{
			Node: c.node, Identity: c.peer, Since: c.since, NACKs: c.nacks, LastNACK: c.lastNACK,
			Versions: make(map[string]string, len(c.sent)),
			Names:    make(map[string][]string, len(c.sent)),
		}
		for _, t := range c.sent {
			cs.Versions[t.typeURL] = t.version
			cs.Names[t.typeURL] = append([]string(nil), t.names...)
		}
		out = append(out, cs)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

func (s *Server) callbacks() serverv3.Callbacks {
	return serverv3.CallbackFuncs{
		StreamOpenFunc: func(ctx context.Context, id int64, _ string) error {
			who, err := s.streamIdentity(ctx)
			if err != nil {
				return err
			}
			s.stats.streams.Add(1)
			s.clientsMu.Lock()
			s.clients[id] = &clientState{since: time.Now(), peer: who}
			s.clientsMu.Unlock()
			return nil
		},
		DeltaStreamOpenFunc: func(context.Context, int64, string) error {
			if s.tr != nil && s.tr.mtls != nil {
				return status.Error(codes.Unimplemented, "meshd serves state-of-the-world xDS only (grpc-go's xDS client uses it); incremental xDS is refused under mTLS")
			}
			return nil
		},
		FetchRequestFunc: func(ctx context.Context, req *discoverypb.DiscoveryRequest) error {
			who, err := s.streamIdentity(ctx)
			if err != nil {
				return err
			}
			s.restrict(who, req)
			return nil
		},
		StreamClosedFunc: func(id int64, _ *corepb.Node) {
			s.clientsMu.Lock()
			delete(s.clients, id)
			s.clientsMu.Unlock()
		},
		StreamRequestFunc: func(id int64, req *discoverypb.DiscoveryRequest) error {
			d := req.GetErrorDetail()
			var sent, who string
			s.clientsMu.Lock()
			if c := s.clients[id]; c != nil {
				who = c.peer
				if c.node == "" {
					c.node = req.GetNode().GetId()
				}
				if d != nil {
					c.nacks++
					c.lastNACK = d.GetMessage()
					if t := c.sentFor(req.GetTypeUrl()); t != nil {
						sent = t.version
					}
				}
			}
			s.clientsMu.Unlock()
			s.restrict(who, req)
			if d == nil {
				return nil
			}
			s.stats.nacks.Add(1)
			s.log.Warn("client refused config (NACK)", "identity", who, "node", req.GetNode().GetId(),
				"type", req.GetTypeUrl(), "resources", req.GetResourceNames(),
				"version", req.GetVersionInfo(), "reason", d.GetMessage())
			// The NACK guard. go-control-plane answers any request whose
			// version differs from the snapshot's, and a NACK carries the
			// client's previous version, so a refused snapshot would be
			// re-sent at once, again and again. go-control-plane hands this
			// request on to the cache's CreateWatch; marked as holding the
			// version this stream refused, it waits for the next snapshot.
			// Per stream, not per node ID: streams may share one.
			if sent != "" {
				req.VersionInfo = sent
			}
			return nil
		},
		StreamResponseFunc: func(_ context.Context, id int64, req *discoverypb.DiscoveryRequest, resp *discoverypb.DiscoveryResponse) {
			s.stats.pushes.Add(1)
			s.clientsMu.Lock()
			if c := s.clients[id]; c != nil {
				t := c.sentFor(resp.GetTypeUrl())
				if t == nil {
					if c.sent == nil {
						c.sent = make([]sentType, 0, 4) // grpc-go subscribes to LDS, RDS, CDS, EDS
					}
					c.sent = append(c.sent, sentType{typeURL: resp.GetTypeUrl()})
					t = &c.sent[len(c.sent)-1]
				}
				t.version = resp.GetVersionInfo()
				// The requested names, not the resources' own: decoding
				// every response would cost more than the push itself.
				t.names = req.GetResourceNames()
			}
			s.clientsMu.Unlock()
		},
	}
}
