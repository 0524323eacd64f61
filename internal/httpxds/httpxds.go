package httpxds

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	"github.com/gridmesh/gridmesh/internal/xdsresource"
)

const (
	listenerType = xdsresource.ListenerType
	routeType    = xdsresource.RouteType
	clusterType  = xdsresource.ClusterType
	endpointType = xdsresource.EndpointType
)

// Config says what to follow and where.
type Config struct {
	// ServerURI is meshd's xDS address (host:port or a gRPC target).
	ServerURI string
	// Credentials secure the connection to meshd: mTLS with the
	// workload's SVID that accepts only meshd's SPIFFE ID (or
	// insecure.NewCredentials() where meshd runs with
	// -insecure-plaintext-xds-for-local-debugging). Required.
	Credentials credentials.TransportCredentials
	// NodeID identifies this client to meshd.
	NodeID string
	// Cluster is the cluster always followed, where requests go when no
	// route applies: the service name ("trading") or a version cluster
	// ("trading/v2").
	Cluster string
	// Listener, when set, is the service's listener ("trading"): its routes
	// apply (see the package doc) and the clusters they name are followed
	// too. Its virtual host is the one whose domains match Listener.
	Listener string
	// RetryMin and RetryMax bound the reconnect backoff (defaults 100ms, 5s).
	RetryMin, RetryMax time.Duration
	// DialOptions are added to the connection to meshd (an
	// xdsstatus.Recorder's interceptor, for one).
	DialOptions []grpc.DialOption
}

// Endpoint is one healthy endpoint of a cluster.
type Endpoint struct {
	Addr   string
	Weight uint32
}

// Cluster is the state of one followed cluster.
type Cluster struct {
	Endpoints []Endpoint
	// Policy is "round_robin", "least_request" or "ring_hash".
	Policy string
	// SANs match the SPIFFE IDs the cluster's mTLS context accepts (its
	// subject alternative names, read as grpc-go reads them); empty when
	// meshd sends none.
	SANs []xdsresource.SAN
}

func (c Cluster) equal(o Cluster) bool {
	return c.Policy == o.Policy && slices.Equal(c.Endpoints, o.Endpoints) && slices.EqualFunc(c.SANs, o.SANs, xdsresource.SAN.Equal)
}

// Update is the state in force.
type Update struct {
	// Clusters are the followed clusters meshd sent, with their endpoints,
	// by name; Config.Cluster is always one.
	Clusters map[string]Cluster
	// Routes are the routes in force, in match order; nil: every request
	// goes to Config.Cluster.
	Routes []*Route
}

// Watch follows one service. Its methods are safe for concurrent use.
type Watch struct {
	cfg    Config
	update func(Update)
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	last    Update
	lastGen int
	have    bool
	lastErr error
	ready   chan struct{}
}

// Start starts following cfg.Cluster (and cfg.Listener's routes) and calls
// update, if not nil, with every new state, one call at a time, never after
// Close returns. It does not block.
func Start(cfg Config, update func(Update)) (*Watch, error) {
	if cfg.ServerURI == "" || cfg.Cluster == "" {
		return nil, errors.New("httpxds: Config.ServerURI and Config.Cluster are required")
	}
	if cfg.Credentials == nil {
		return nil, errors.New("httpxds: Config.Credentials is nil: pass the workload's mTLS credentials for meshd (or, for local debugging only, insecure.NewCredentials())")
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = 100 * time.Millisecond
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(5*time.Second, cfg.RetryMin)
	}
	cc, err := grpc.NewClient(cfg.ServerURI, append([]grpc.DialOption{grpc.WithTransportCredentials(cfg.Credentials)}, cfg.DialOptions...)...)
	if err != nil {
		return nil, fmt.Errorf("httpxds: control plane %q: %w", cfg.ServerURI, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &Watch{cfg: cfg, update: update, cancel: cancel, done: make(chan struct{}), ready: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer cc.Close()
		w.run(ctx, discoverypb.NewAggregatedDiscoveryServiceClient(cc))
	}()
	return w, nil
}

// Wait blocks until the first complete update (Config.Cluster and its
// endpoints; routes may come later) or until ctx ends; then the error
// includes the last failure, if any.
func (w *Watch) Wait(ctx context.Context) (Update, error) {
	select {
	case <-w.ready:
		return w.Last(), nil
	case <-ctx.Done():
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.lastErr != nil {
			return Update{}, fmt.Errorf("httpxds: cluster %q from %s: %w (last error: %v)", w.cfg.Cluster, w.cfg.ServerURI, ctx.Err(), w.lastErr)
		}
		return Update{}, fmt.Errorf("httpxds: cluster %q from %s: %w", w.cfg.Cluster, w.cfg.ServerURI, ctx.Err())
	}
}

// Last returns the last complete update (zero before the first).
func (w *Watch) Last() Update {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

// Close stops the watch and waits for its goroutine. It is safe to call
// more than once.
func (w *Watch) Close() error {
	w.cancel()
	<-w.done
	return nil
}

func (w *Watch) run(ctx context.Context, ads discoverypb.AggregatedDiscoveryServiceClient) {
	backoff := w.cfg.RetryMin
	st := &state{w: w}
	for {
		start := time.Now()
		err := st.stream(ctx, ads)
		if ctx.Err() != nil {
			return
		}
		w.mu.Lock()
		w.lastErr = err
		w.mu.Unlock()
		if time.Since(start) > w.cfg.RetryMax {
			backoff = w.cfg.RetryMin
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		backoff = min(backoff*2, w.cfg.RetryMax)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// state is what the watch holds across streams: the last good resources.
// A new stream starts its subscriptions afresh but keeps these, so a
// reconnect changes nothing until meshd sends something new.
type state struct {
	w *Watch

	clusters map[string]*clusterState // accepted, by cluster name
	eds      map[string][]Endpoint    // accepted, by EDS service name
	rdsName  string
	applied  []*Route // the route table in force
	gen      int      // counts changes of applied
	pending  []*Route // a newer table waiting for its clusters
	waiting  bool     // pending is set (it may be nil: no routes)

	// Per stream: versions and nonces by type, the names subscribed.
	ver, nonce map[string]string
	subscribed map[string][]string
	send       func(typeURL string, nack error) error
}

// wantClusters is every cluster to follow: Config.Cluster, the clusters of
// the table in force and of the one waiting.
func (st *state) wantClusters() []string {
	set := map[string]bool{st.w.cfg.Cluster: true}
	for _, n := range clusterNames(st.applied) {
		set[n] = true
	}
	for _, n := range clusterNames(st.pending) {
		set[n] = true
	}
	return slices.Sorted(maps.Keys(set))
}

func (st *state) wantEDS() []string {
	set := map[string]bool{}
	for _, n := range st.wantClusters() {
		if c := st.clusters[n]; c != nil {
			set[c.edsName] = true
		}
	}
	return slices.Sorted(maps.Keys(set))
}

func (st *state) names(typeURL string) []string {
	switch typeURL {
	case listenerType:
		return []string{st.w.cfg.Listener}
	case routeType:
		return []string{st.rdsName}
	case clusterType:
		return st.wantClusters()
	}
	return st.wantEDS()
}

// known says the cluster and its endpoints are known.
func (st *state) known(name string) bool {
	c := st.clusters[name]
	if c == nil {
		return false
	}
	_, ok := st.eds[c.edsName]
	return ok
}

// promote puts the waiting table in force once its clusters are known.
func (st *state) promote() {
	if !st.waiting {
		return
	}
	for _, n := range clusterNames(st.pending) {
		if !st.known(n) {
			return
		}
	}
	st.applied, st.pending, st.waiting = st.pending, nil, false
	st.gen++
}

// resubscribe sends a request for each of CDS, EDS and RDS whose wanted
// names changed, with that type's last version and nonce.
func (st *state) resubscribe() error {
	for _, typ := range []string{routeType, clusterType, endpointType} {
		if typ == routeType && st.rdsName == "" {
			continue
		}
		if typ == endpointType && len(st.wantEDS()) == 0 {
			continue
		}
		if !slices.Equal(st.names(typ), st.subscribed[typ]) {
			if err := st.send(typ, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// stream runs one ADS stream until it fails.
func (st *state) stream(ctx context.Context, ads discoverypb.AggregatedDiscoveryServiceClient) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := ads.StreamAggregatedResources(ctx, grpc.WaitForReady(true))
	if err != nil {
		return err
	}
	w := st.w
	node := &corepb.Node{Id: w.cfg.NodeID, UserAgentName: "gridmesh-http"}
	st.ver, st.nonce, st.subscribed = map[string]string{}, map[string]string{}, map[string][]string{}
	st.send = func(typeURL string, nack error) error {
		names := st.names(typeURL)
		req := &discoverypb.DiscoveryRequest{Node: node, TypeUrl: typeURL, ResourceNames: names, VersionInfo: st.ver[typeURL], ResponseNonce: st.nonce[typeURL]}
		if nack != nil {
			req.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: nack.Error()}
		}
		st.subscribed[typeURL] = names
		return s.Send(req)
	}
	if err := st.send(clusterType, nil); err != nil {
		return err
	}
	if w.cfg.Listener != "" {
		if err := st.send(listenerType, nil); err != nil {
			return err
		}
	}
	if err := st.resubscribe(); err != nil {
		return err
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			return err
		}
		typ := resp.GetTypeUrl()
		switch typ {
		case listenerType, routeType, clusterType, endpointType:
		default:
			continue
		}
		st.nonce[typ] = resp.GetNonce()
		if err := st.apply(resp); err != nil {
			if err := st.send(typ, err); err != nil {
				return err
			}
			continue
		}
		st.ver[typ] = resp.GetVersionInfo()
		st.promote()
		if err := st.send(typ, nil); err != nil {
			return err
		}
		if err := st.resubscribe(); err != nil {
			return err
		}
		st.publish()
	}
}

// apply takes a response into the state, or says why it cannot be used;
// then the state is unchanged.
func (st *state) apply(resp *discoverypb.DiscoveryResponse) error {
	cfg := st.w.cfg
	switch resp.GetTypeUrl() {
	case listenerType:
		l, err := parseListener(resp, cfg.Listener)
		if err != nil {
			return err
		}
		switch {
		case l == nil: // meshd has no listener for the service (any more)
			st.rdsName = ""
			st.pending, st.waiting = nil, true
		case l.inline != nil:
			routes, err := routeTable(l.inline, cfg.Listener)
			if err != nil {
				return err
			}
			st.rdsName = ""
			st.pending, st.waiting = routes, true
		case l.rds != st.rdsName:
			// The table in force stays until the new configuration comes.
			st.rdsName = l.rds
			st.ver[routeType] = ""
		}
	case routeType:
		for _, r := range resp.GetResources() {
			rc := &routepb.RouteConfiguration{}
			if err := r.UnmarshalTo(rc); err != nil {
				return fmt.Errorf("httpxds: route configuration: %w", err)
			}
			if rc.GetName() != st.rdsName {
				continue
			}
			routes, err := routeTable(rc, cfg.Listener)
			if err != nil {
				return err
			}
			st.pending, st.waiting = routes, true
		}
	case clusterType:
		want := st.wantClusters()
		got := map[string]*clusterState{}
		for _, r := range resp.GetResources() {
			c := &clusterpb.Cluster{}
			if err := r.UnmarshalTo(c); err != nil {
				return fmt.Errorf("httpxds: cluster: %w", err)
			}
			if !slices.Contains(want, c.GetName()) {
				continue
			}
			cs, err := parseCluster(c)
			if err != nil {
				return err
			}
			got[c.GetName()] = cs
		}
		if got[cfg.Cluster] == nil {
			return fmt.Errorf("httpxds: response has no cluster %q", cfg.Cluster)
		}
		// State of the world: a cluster the response lacks is gone.
		st.clusters = got
	case endpointType:
		want := st.wantEDS()
		got := map[string][]Endpoint{}
		for _, r := range resp.GetResources() {
			cla := &endpointpb.ClusterLoadAssignment{}
			if err := r.UnmarshalTo(cla); err != nil {
				return fmt.Errorf("httpxds: endpoints: %w", err)
			}
			if !slices.Contains(want, cla.GetClusterName()) {
				continue
			}
			eps, err := parseEndpoints(cla)
			if err != nil {
				return err
			}
			got[cla.GetClusterName()] = eps
		}
		if st.eds == nil {
			st.eds = map[string][]Endpoint{}
		}
		maps.Copy(st.eds, got)
		for name := range st.eds {
			if !slices.Contains(want, name) {
				delete(st.eds, name)
			}
		}
	}
	return nil
}

// publish hands out the state once Config.Cluster is known.
func (st *state) publish() {
	if !st.known(st.w.cfg.Cluster) {
		return
	}
	u := Update{Clusters: map[string]Cluster{}, Routes: st.applied}
	for _, n := range st.wantClusters() {
		if st.known(n) {
			c := st.clusters[n]
			u.Clusters[n] = Cluster{Endpoints: st.eds[c.edsName], Policy: c.policy, SANs: c.sans}
		}
	}
	st.w.publish(u, st.gen)
}

func (w *Watch) publish(u Update, gen int) {
	w.mu.Lock()
	same := w.have && gen == w.lastGen && maps.EqualFunc(u.Clusters, w.last.Clusters, Cluster.equal)
	first := !w.have
	w.last, w.lastGen, w.have, w.lastErr = u, gen, true, nil
	w.mu.Unlock()
	if first {
		close(w.ready)
	}
	if !same && w.update != nil {
		w.update(u)
	}
}

type listenerState struct {
	rds    string
	inline *routepb.RouteConfiguration
}

// parseListener returns the listener name's route configuration name or
// inline routes, nil when the response does not carry the listener.
func parseListener(resp *discoverypb.DiscoveryResponse, name string) (*listenerState, error) {
	for _, r := range resp.GetResources() {
		l := &listenerpb.Listener{}
		if err := r.UnmarshalTo(l); err != nil {
			return nil, fmt.Errorf("httpxds: listener: %w", err)
		}
		if l.GetName() != name {
			continue
		}
		rds, inline, err := xdsresource.ListenerRoutes(l)
		if err != nil {
			return nil, fmt.Errorf("httpxds: %w", err)
		}
		return &listenerState{rds: rds, inline: inline}, nil
	}
	return nil, nil
}

type clusterState struct {
	edsName string
	policy  string
	sans    []xdsresource.SAN
}

func parseCluster(c *clusterpb.Cluster) (*clusterState, error) {
	name := c.GetName()
	if c.GetType() != clusterpb.Cluster_EDS {
		return nil, fmt.Errorf("httpxds: cluster %q: type %v, want EDS", name, c.GetType())
	}
	st := &clusterState{edsName: xdsresource.EDSServiceName(c)}
	switch c.GetLbPolicy() {
	case clusterpb.Cluster_ROUND_ROBIN:
		st.policy = "round_robin"
	case clusterpb.Cluster_LEAST_REQUEST:
		st.policy = "least_request"
	case clusterpb.Cluster_RING_HASH:
		st.policy = "ring_hash"
	default:
		return nil, fmt.Errorf("httpxds: cluster %q: lb_policy %v not supported", name, c.GetLbPolicy())
	}
	sans, err := xdsresource.ClusterSANs(c)
	if err != nil {
		return nil, fmt.Errorf("httpxds: %w", err)
	}
	st.sans = sans
	return st, nil
}

// parseEndpoints returns the healthy endpoints of the assignment.
func parseEndpoints(cla *endpointpb.ClusterLoadAssignment) ([]Endpoint, error) {
	name := cla.GetClusterName()
	eps := []Endpoint{}
	for _, loc := range cla.GetEndpoints() {
		for _, lb := range loc.GetLbEndpoints() {
			switch lb.GetHealthStatus() {
			case corepb.HealthStatus_UNKNOWN, corepb.HealthStatus_HEALTHY:
			default:
				continue
			}
			addr, w, ok := xdsresource.Endpoint(lb)
			if !ok {
				return nil, fmt.Errorf("httpxds: endpoints of %q: an endpoint without a socket address", name)
			}
			eps = append(eps, Endpoint{Addr: addr, Weight: w})
		}
	}
	slices.SortFunc(eps, func(a, b Endpoint) int { return strings.Compare(a.Addr, b.Addr) })
	return eps, nil
}
