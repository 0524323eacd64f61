package admin

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	adminpb "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	v3statuspb "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"google.golang.org/grpc"
	channelzsvc "google.golang.org/grpc/channelz/service"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds/csds"

	"github.com/gridmesh/gridmesh/internal/meshtel"
)

// Config configures Listen. Only Addr is required.
type Config struct {
	// Addr is the loopback host:port to listen on, e.g. "127.0.0.1:15000"
	// or "[::1]:15000" or "localhost:0". Any other host is refused.
	Addr string
	// Metrics, when set, is served at /metrics (a Prometheus scrape handler,
	// see telemetry.Providers.PrometheusHandler).
	Metrics http.Handler
	// Events and Denials are how many recent events and denials are kept.
	// Defaults 1024 and 256. Config and state changes (xDS and discovery
	// updates, breaker changes, ejections, rotations) are kept apart, a
	// quarter as many (at least 64), so that traffic does not push them out.
	Events, Denials int
	// Logger receives serving errors. Default: silent.
	Logger *slog.Logger
}

// Provider is what a mesh server or client contributes to the endpoint.
// Every func may be nil; each is called on every request, so it must be
// quick and safe for concurrent use.
type Provider struct {
	Component Component
	Identity  func() Identity
	Targets   func() []Target
	Policies  func() []Policy
	// XDS returns what the component's own xDS client holds (every
	// resource with its version, ACKed or NACKed), in CSDS's shape; nil
	// when it has none. ClientScope is set from Component.Name.
	XDS func() *v3statuspb.ClientConfig
}

// Server is the admin endpoint: JSON over HTTP, plus grpc-go's channelz
// and a CSDS service over gRPC (h2c) on the same loopback port. The CSDS
// service answers for grpc-go's process-wide xDS client (set up through
// GRPC_XDS_BOOTSTRAP) and for the xDS client of every provider with an XDS
// func, one ClientConfig each. It refuses
// callers that are not on loopback and requests whose Host header names
// anything but a loopback address or localhost (DNS rebinding). Safe for
// concurrent use.
//
// Paths (GET): /status (everything), /identity, /targets[?target=T],
// /config, /denials, /events[?target=T], /metrics (when configured).
type Server struct {
	cfg     Config
	lis     net.Listener
	http    *http.Server
	grpc    *grpc.Server
	csds    *csds.ClientStatusDiscoveryServer
	started time.Time
	done    chan struct{}

	mu        sync.Mutex
	nextID    int
	providers map[int]Provider
	events    ring[recorded] // calls, retries, hedges, denials...
	changes   ring[recorded] // config and state changes, kept apart so calls do not push them out
	recorded  uint64         // events recorded so far, to merge the two rings in order
	denials   ring[Denial]
	observed  map[string]map[string]Endpoint

	closeOnce sync.Once
}

// ErrNotLoopback says an address is not a loopback address.
var ErrNotLoopback = errors.New("admin endpoint must listen on loopback")

// CheckLoopback returns an error wrapping ErrNotLoopback unless addr's host
// is a loopback IP or "localhost".
func CheckLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("admin: address %q: %w (want host:port on loopback, e.g. 127.0.0.1:15000)", addr, err)
	}
	if !isLoopbackHost(host) {
		return fmt.Errorf("admin: address %q: %w: use 127.0.0.1, [::1] or localhost; the endpoint shows identities and config and must not be reachable from other hosts", addr, ErrNotLoopback)
	}
	return nil
}

func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Listen starts the admin endpoint on cfg.Addr and serves it until Close.
// It does not block beyond opening the listener.
func Listen(cfg Config) (*Server, error) {
	if err := CheckLoopback(cfg.Addr); err != nil {
		return nil, err
	}
	if cfg.Events <= 0 {
		cfg.Events = 1024
	}
	if cfg.Denials <= 0 {
		cfg.Denials = 256
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	host, port, _ := net.SplitHostPort(cfg.Addr)
	if strings.EqualFold(host, "localhost") {
		host = "127.0.0.1" // never let the resolver pick a non-loopback address
	}
	lis, err := net.Listen("tcp", net.JoinHostPort(host, port))
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	s := &Server{
		cfg:       cfg,
		lis:       lis,
		started:   time.Now(),
		done:      make(chan struct{}),
		providers: map[int]Provider{},
		events:    newRing[recorded](cfg.Events),
		changes:   newRing[recorded](max(cfg.Events/4, 64)),
		denials:   newRing[Denial](cfg.Denials),
		observed:  map[string]map[string]Endpoint{},
		grpc:      grpc.NewServer(),
	}
	channelzsvc.RegisterChannelzServiceToServer(s.grpc)
	s.csds, _ = csds.NewClientStatusDiscoveryServer() // never fails
	v3statuspb.RegisterClientStatusDiscoveryServiceServer(s.grpc, csdsService{s: s})

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.index)
	mux.HandleFunc("GET /status", s.serveJSON(func(r *http.Request) any { return s.Status(r.Context()) }))
	mux.HandleFunc("GET /identity", s.serveJSON(func(*http.Request) any { return s.identities() }))
	mux.HandleFunc("GET /targets", s.serveJSON(func(r *http.Request) any { return s.targets(r.URL.Query().Get("target")) }))
	mux.HandleFunc("GET /config", s.serveJSON(func(r *http.Request) any { return s.configView(r.Context()) }))
	mux.HandleFunc("GET /denials", s.serveJSON(func(*http.Request) any { return s.denialList() }))
	mux.HandleFunc("GET /events", s.serveJSON(func(r *http.Request) any { return s.eventList(r.URL.Query().Get("target")) }))
	if cfg.Metrics != nil {
		mux.Handle("GET /metrics", cfg.Metrics)
	}
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true) // gRPC clients speak h2c with prior knowledge
	s.http = &http.Server{
		Handler:           s.guard(mux),
		Protocols:         protocols,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
	}
	go func() {
		defer close(s.done)
		if err := s.http.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			cfg.Logger.Warn("admin endpoint stopped", "error", err)
		}
	}()
	return s, nil
}

// Handler returns the endpoint's handler, loopback checks included, to
// serve it elsewhere (with the caller's own listener and its risks).
func (s *Server) Handler() http.Handler { return s.http.Handler }

// Addr returns the address the endpoint listens on.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Close stops the endpoint and waits for it. Safe to call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.http.Shutdown(ctx); err != nil {
			s.http.Close()
		}
		s.grpc.Stop()
		<-s.done
	})
	return nil
}

// guard refuses non-loopback callers and non-loopback Host headers, then
// sends gRPC to the channelz and CSDS services and the rest to mux.
func (s *Server) guard(mux http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil || !isLoopbackHost(host) {
			http.Error(w, "admin endpoint: only loopback callers are served", http.StatusForbidden)
			return
		}
		reqHost := r.Host
		if h, _, err := net.SplitHostPort(reqHost); err == nil {
			reqHost = h
		}
		if !isLoopbackHost(strings.Trim(reqHost, "[]")) {
			http.Error(w, "admin endpoint: Host must be a loopback address or localhost", http.StatusForbidden)
			return
		}
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			s.grpc.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func (s *Server) serveJSON(f func(*http.Request) any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(f(r))
	}
}

func (s *Server) index(w http.ResponseWriter, r *http.Request) {
	paths := []string{"/status", "/identity", "/targets", "/config", "/denials", "/events"}
	if s.cfg.Metrics != nil {
		paths = append(paths, "/metrics")
	}
	s.serveJSON(func(*http.Request) any {
		return map[string]any{
			"paths": paths,
			"grpc":  []string{"grpc.channelz.v1.Channelz", "envoy.service.status.v3.ClientStatusDiscoveryService"},
		}
	})(w, r)
}

// Register adds a provider; the returned func removes it. Safe to call
// the returned func more than once.
func (s *Server) Register(p Provider) (unregister func()) {
	s.mu.Lock()
	id := s.nextID
	s.nextID++
	s.providers[id] = p
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.providers, id)
		s.mu.Unlock()
	}
}

// Record stores an event: the recent-events ring, plus the denials and
// observed endpoints derived from it. Use it as a meshtel.Recorder sink:
// m.OnEvent(s.Record). (Config received is read from the providers' xDS
// clients, not from events.)
func (s *Server) Record(e meshtel.Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recorded++
	if meshtel.IsChange(e.Kind) {
		s.changes.add(recorded{s.recorded, e})
	} else {
		s.events.add(recorded{s.recorded, e})
	}
	switch e.Kind {
	case meshtel.EventDenied:
		s.denials.add(Denial{Time: e.Time, Caller: e.Source, Method: e.Method, Rule: e.Rule})
	case meshtel.EventCall:
		if e.Side == "client" && e.Endpoint != "" {
			eps := s.observed[e.Target]
			if eps == nil {
				eps = map[string]Endpoint{}
				s.observed[e.Target] = eps
			}
			eps[e.Endpoint] = Endpoint{Address: e.Endpoint, Identity: e.Peer, LastCall: e.Time, LastCode: e.Code}
		}
	}
}

// Status returns everything the endpoint shows.
func (s *Server) Status(ctx context.Context) Status {
	cv := s.configView(ctx)
	exe, _ := os.Executable()
	st := Status{
		Process: Process{PID: os.Getpid(), Program: exe, GoVersion: runtime.Version(),
			Started: s.started, Now: time.Now()},
		Components:  s.components(),
		Identities:  s.identities(),
		Targets:     s.targets(""),
		Policies:    cv.Policies,
		Config:      cv.Updates,
		Unsupported: cv.Unsupported,
		Denials:     s.denialList(),
		Events:      s.eventList(""),
	}
	return st
}

func (s *Server) snapshotProviders() []Provider {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]int, 0, len(s.providers))
	for id := range s.providers {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	out := make([]Provider, 0, len(ids))
	for _, id := range ids {
		out = append(out, s.providers[id])
	}
	return out
}

func (s *Server) components() []Component {
	out := []Component{}
	for _, p := range s.snapshotProviders() {
		out = append(out, p.Component)
	}
	return out
}

func (s *Server) identities() []Identity {
	out := []Identity{}
	seen := map[string]bool{}
	for _, p := range s.snapshotProviders() {
		if p.Identity == nil {
			continue
		}
		id := p.Identity()
		key := id.SPIFFEID + "/" + id.Serial
		if seen[key] {
			continue
		}
		seen[key] = true
		out = append(out, id)
	}
	return out
}

// targets merges what providers report with the endpoints calls were
// observed going to (in Observed).
func (s *Server) targets(only string) []Target {
	out := []Target{}
	seen := map[string]bool{}
	for _, p := range s.snapshotProviders() {
		if p.Targets == nil {
			continue
		}
		for _, t := range p.Targets() {
			if only != "" && t.Target != only || seen[t.Target] {
				continue
			}
			seen[t.Target] = true
			if t.Endpoints == nil {
				t.Endpoints = []Endpoint{}
			}
			t.Observed = s.observedFor(t.Target)
			out = append(out, t)
		}
	}
	return out
}

func (s *Server) observedFor(target string) []Endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []Endpoint{}
	for _, ep := range s.observed[target] {
		out = append(out, ep)
	}
	slices.SortFunc(out, func(a, b Endpoint) int { return strings.Compare(a.Address, b.Address) })
	return out
}

// ConfigView is what GET /config returns.
type ConfigView struct {
	// Policies are the effective policies with their source.
	Policies []Policy `json:"policies"`
	// Updates is every xDS resource the process's xDS clients hold: the
	// last version accepted, or refused and why (the CSDS view).
	Updates []ConfigUpdate `json:"updates"`
	// Unsupported lists fields of those resources that grpc-go does not
	// act on.
	Unsupported []Unsupported `json:"unsupported"`
}

func (s *Server) configView(ctx context.Context) ConfigView {
	cv := ConfigView{Policies: []Policy{}, Updates: []ConfigUpdate{}, Unsupported: []Unsupported{}}
	seen := map[Policy]bool{} // clients of one target often share a policy
	for _, p := range s.snapshotProviders() {
		if p.Policies == nil {
			continue
		}
		for _, pol := range p.Policies() {
			if !seen[pol] {
				seen[pol] = true
				cv.Policies = append(cv.Policies, pol)
			}
		}
	}
	for _, cc := range s.clientStatus(ctx).GetConfig() {
		for _, g := range cc.GetGenericXdsConfigs() {
			u := ConfigUpdate{
				Source:   "xds",
				Scope:    cc.GetClientScope(),
				Resource: g.GetTypeUrl(),
				Name:     g.GetName(),
				Version:  g.GetVersionInfo(),
				Status:   g.GetClientStatus().String(),
				Accepted: g.GetClientStatus() == adminpb.ClientResourceStatus_ACKED,
			}
			if t := g.GetLastUpdated(); t != nil {
				u.ReceivedAt = t.AsTime()
			}
			if es := g.GetErrorState(); es != nil {
				u.Detail = fmt.Sprintf("version %s refused: %s", es.GetVersionInfo(), es.GetDetails())
			}
			cv.Updates = append(cv.Updates, u)
			if a := g.GetXdsConfig(); a != nil {
				if m, err := a.UnmarshalNew(); err == nil {
					for _, f := range UnsupportedFields(m) {
						cv.Unsupported = append(cv.Unsupported, Unsupported{Source: "xds", Scope: u.Scope,
							Resource: u.Resource, Name: u.Name, Field: f, Seen: u.ReceivedAt})
					}
				}
			}
		}
	}
	// Clients and servers list their resources in xDS order (listeners,
	// routes, clusters, endpoints); keep it, grouped by scope.
	slices.SortStableFunc(cv.Updates, func(a, b ConfigUpdate) int { return strings.Compare(a.Scope, b.Scope) })
	slices.SortStableFunc(cv.Unsupported, func(a, b Unsupported) int { return strings.Compare(a.Scope, b.Scope) })
	return cv
}

// clientStatus is the CSDS answer: grpc-go's process-wide xDS client, then
// each provider's.
func (s *Server) clientStatus(ctx context.Context) *v3statuspb.ClientStatusResponse {
	resp := &v3statuspb.ClientStatusResponse{}
	if d, err := s.csds.FetchClientStatus(ctx, &v3statuspb.ClientStatusRequest{}); err == nil {
		resp.Config = append(resp.Config, d.GetConfig()...)
	}
	for _, p := range s.snapshotProviders() {
		if p.XDS == nil {
			continue
		}
		if cc := p.XDS(); cc != nil {
			cc.ClientScope = p.Component.Name
			resp.Config = append(resp.Config, cc)
		}
	}
	return resp
}

// csdsService serves clientStatus as envoy.service.status.v3's
// ClientStatusDiscoveryService, so CSDS tools (grpcdebug) see every xDS
// client of the process.
type csdsService struct {
	v3statuspb.UnimplementedClientStatusDiscoveryServiceServer
	s *Server
}

func (c csdsService) FetchClientStatus(ctx context.Context, req *v3statuspb.ClientStatusRequest) (*v3statuspb.ClientStatusResponse, error) {
	if len(req.GetNodeMatchers()) != 0 {
		// As grpc-go's CSDS: one process, one node per client; see gRFC A40.
		return nil, status.Error(codes.InvalidArgument, "admin: CSDS node_matchers are not supported; send a request without them")
	}
	return c.s.clientStatus(ctx), nil
}

func (c csdsService) StreamClientStatus(stream v3statuspb.ClientStatusDiscoveryService_StreamClientStatusServer) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		resp, err := c.FetchClientStatus(stream.Context(), req)
		if err != nil {
			return err
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

func (s *Server) denialList() []Denial {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.denials.list()
}

// eventList returns the recent events, oldest first: traffic and changes
// merged.
func (s *Server) eventList(target string) []meshtel.Event {
	s.mu.Lock()
	merged := append(s.events.list(), s.changes.list()...)
	s.mu.Unlock()
	slices.SortFunc(merged, func(a, b recorded) int { return cmp.Compare(a.seq, b.seq) })
	all := make([]meshtel.Event, len(merged))
	for i, r := range merged {
		all[i] = r.Event
	}
	if target == "" {
		return all
	}
	out := []meshtel.Event{}
	for _, e := range all {
		if e.Target == target {
			out = append(out, e)
		}
	}
	return out
}

// recorded is an event and its place in the order events were recorded.
type recorded struct {
	seq uint64
	meshtel.Event
}

// ring keeps the last n values, oldest first.
type ring[T any] struct {
	buf  []T
	next int
	full bool
}

func newRing[T any](n int) ring[T] { return ring[T]{buf: make([]T, n)} }

func (r *ring[T]) add(v T) {
	r.buf[r.next] = v
	r.next = (r.next + 1) % len(r.buf)
	if r.next == 0 {
		r.full = true
	}
}

func (r *ring[T]) list() []T {
	if !r.full {
		return append([]T{}, r.buf[:r.next]...)
	}
	return append(append([]T{}, r.buf[r.next:]...), r.buf[:r.next]...)
}
