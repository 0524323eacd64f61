// Package httpxds is the mesh HTTP client's small xDS client: over one ADS
// stream to meshd it follows a single cluster (CDS, for the load-balancing
// policy and the SPIFFE IDs the cluster's endpoints may present) and that
// cluster's endpoints (EDS). It applies nothing else: no routes, no
// per-cluster circuit breakers or outlier detection. With Config.Listener
// it also subscribes to the service's listener and route configuration,
// ACKing them without applying them, so that a recorder on the stream
// (internal/xdsstatus) can show the routes the HTTP client does not follow.
//
// While meshd is unreachable the watch keeps its last update and reconnects
// with backoff; a response it cannot use is NACKed and the last good update
// stays in force.
package httpxds

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlspb "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
)

const (
	listenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	routeType    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	clusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	endpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

// Config says what to follow and where.
type Config struct {
	// ServerURI is meshd's xDS address (host:port or a gRPC target); the
	// connection is plaintext, as in internal/xdsbootstrap.
	ServerURI string
	// NodeID identifies this client to meshd.
	NodeID string
	// Cluster is the cluster to follow: the service name ("trading") or a
	// version cluster ("trading/v2").
	Cluster string
	// Listener, when set, is the service's listener ("trading"), followed
	// with its route configuration but not applied (see the package doc).
	Listener string
	// RetryMin and RetryMax bound the reconnect backoff (defaults 100ms, 5s).
	RetryMin, RetryMax time.Duration
	// DialOptions are added to the connection to meshd (an
	// xdsstatus.Recorder's interceptor, for one).
	DialOptions []grpc.DialOption
}

// Endpoint is one healthy endpoint of the cluster.
type Endpoint struct {
	Addr   string
	Weight uint32
}

// Update is the cluster's state.
type Update struct {
	Endpoints []Endpoint
	// Policy is "round_robin", "least_request" or "ring_hash".
	Policy string
	// IDs are the SPIFFE IDs the cluster's mTLS context accepts (its
	// subject alternative names); empty when meshd sends none.
	IDs []spiffeid.ID
}

// Watch follows one cluster. Its methods are safe for concurrent use.
type Watch struct {
	cfg    Config
	update func(Update)
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	last    Update
	have    bool
	lastErr error
	ready   chan struct{}
}

// Start starts following cfg.Cluster and calls update, if not nil, with
// every new state, one call at a time, never after Close returns. It does
// not block.
func Start(cfg Config, update func(Update)) (*Watch, error) {
	if cfg.ServerURI == "" || cfg.Cluster == "" {
		return nil, errors.New("httpxds: Config.ServerURI and Config.Cluster are required")
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = 100 * time.Millisecond
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(5*time.Second, cfg.RetryMin)
	}
	cc, err := grpc.NewClient(cfg.ServerURI, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, cfg.DialOptions...)...)
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

// Wait blocks until the first complete update (cluster and endpoints) or
// until ctx ends; then the error includes the last failure, if any.
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
	for {
		start := time.Now()
		err := w.stream(ctx, ads)
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

// stream runs one ADS stream until it fails.
func (w *Watch) stream(ctx context.Context, ads discoverypb.AggregatedDiscoveryServiceClient) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := ads.StreamAggregatedResources(ctx, grpc.WaitForReady(true))
	if err != nil {
		return err
	}
	node := &corepb.Node{Id: w.cfg.NodeID, UserAgentName: "gridmesh-http"}
	send := func(typeURL string, names []string, version, nonce string, nack error) error {
		req := &discoverypb.DiscoveryRequest{Node: node, TypeUrl: typeURL, ResourceNames: names, VersionInfo: version, ResponseNonce: nonce}
		if nack != nil {
			req.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: nack.Error()}
		}
		return s.Send(req)
	}
	if err := send(clusterType, []string{w.cfg.Cluster}, "", "", nil); err != nil {
		return err
	}
	if w.cfg.Listener != "" {
		if err := send(listenerType, []string{w.cfg.Listener}, "", "", nil); err != nil {
			return err
		}
	}
	var (
		cds            *clusterState
		edsName        string
		cdsVer, edsVer string
		eps            []Endpoint
		haveEDS        bool
		rdsName        string
	)
	for {
		resp, err := s.Recv()
		if err != nil {
			return err
		}
		switch resp.GetTypeUrl() {
		case listenerType: // followed, not applied: ACK whatever comes
			if err := send(listenerType, []string{w.cfg.Listener}, resp.GetVersionInfo(), resp.GetNonce(), nil); err != nil {
				return err
			}
			if name := routeConfigName(resp, w.cfg.Listener); name != "" && name != rdsName {
				rdsName = name
				if err := send(routeType, []string{rdsName}, "", "", nil); err != nil {
					return err
				}
			}
			continue
		case routeType:
			if err := send(routeType, []string{rdsName}, resp.GetVersionInfo(), resp.GetNonce(), nil); err != nil {
				return err
			}
			continue
		case clusterType:
			st, err := parseCluster(resp, w.cfg.Cluster)
			if err != nil {
				if err := send(clusterType, []string{w.cfg.Cluster}, cdsVer, resp.GetNonce(), err); err != nil {
					return err
				}
				continue
			}
			cdsVer = resp.GetVersionInfo()
			if err := send(clusterType, []string{w.cfg.Cluster}, cdsVer, resp.GetNonce(), nil); err != nil {
				return err
			}
			cds = st
			if st.edsName != edsName {
				edsName, edsVer, haveEDS = st.edsName, "", false
				if err := send(endpointType, []string{edsName}, "", "", nil); err != nil {
					return err
				}
			}
		case endpointType:
			got, err := parseEndpoints(resp, edsName)
			if err != nil {
				if err := send(endpointType, []string{edsName}, edsVer, resp.GetNonce(), err); err != nil {
					return err
				}
				continue
			}
			edsVer = resp.GetVersionInfo()
			if err := send(endpointType, []string{edsName}, edsVer, resp.GetNonce(), nil); err != nil {
				return err
			}
			if got != nil {
				eps, haveEDS = got, true
			}
		default:
			continue
		}
		if cds != nil && haveEDS {
			w.publish(Update{Endpoints: eps, Policy: cds.policy, IDs: cds.ids})
		}
	}
}

func (w *Watch) publish(u Update) {
	w.mu.Lock()
	same := w.have && slices.Equal(u.Endpoints, w.last.Endpoints) && u.Policy == w.last.Policy && slices.Equal(u.IDs, w.last.IDs)
	first := !w.have
	w.last, w.have, w.lastErr = u, true, nil
	w.mu.Unlock()
	if first {
		close(w.ready)
	}
	if !same && w.update != nil {
		w.update(u)
	}
}

// routeConfigName returns the RDS name the listener name refers to, "" when
// the response does not carry it or it has its routes inline.
func routeConfigName(resp *discoverypb.DiscoveryResponse, name string) string {
	for _, r := range resp.GetResources() {
		l := &listenerpb.Listener{}
		if r.UnmarshalTo(l) != nil || l.GetName() != name {
			continue
		}
		hcm := &hcmpb.HttpConnectionManager{}
		if l.GetApiListener().GetApiListener().UnmarshalTo(hcm) != nil {
			return ""
		}
		return hcm.GetRds().GetRouteConfigName()
	}
	return ""
}

type clusterState struct {
	edsName string
	policy  string
	ids     []spiffeid.ID
}

func parseCluster(resp *discoverypb.DiscoveryResponse, name string) (*clusterState, error) {
	for _, r := range resp.GetResources() {
		c := &clusterpb.Cluster{}
		if err := r.UnmarshalTo(c); err != nil {
			return nil, fmt.Errorf("httpxds: cluster: %w", err)
		}
		if c.GetName() != name {
			continue
		}
		if c.GetType() != clusterpb.Cluster_EDS {
			return nil, fmt.Errorf("httpxds: cluster %q: type %v, want EDS", name, c.GetType())
		}
		st := &clusterState{edsName: c.GetEdsClusterConfig().GetServiceName()}
		if st.edsName == "" {
			st.edsName = name
		}
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
		if ts := c.GetTransportSocket(); ts != nil {
			up := &tlspb.UpstreamTlsContext{}
			if err := ts.GetTypedConfig().UnmarshalTo(up); err != nil {
				return nil, fmt.Errorf("httpxds: cluster %q: transport socket: %w", name, err)
			}
			for _, m := range up.GetCommonTlsContext().GetValidationContext().GetMatchSubjectAltNames() {
				id, err := spiffeid.FromString(m.GetExact())
				if err != nil {
					return nil, fmt.Errorf("httpxds: cluster %q: SAN matcher %v: want an exact SPIFFE ID", name, m)
				}
				st.ids = append(st.ids, id)
			}
		}
		return st, nil
	}
	return nil, fmt.Errorf("httpxds: response has no cluster %q", name)
}

// parseEndpoints returns the healthy endpoints of the assignment name, or
// nil, nil when the response does not carry it.
func parseEndpoints(resp *discoverypb.DiscoveryResponse, name string) ([]Endpoint, error) {
	for _, r := range resp.GetResources() {
		cla := &endpointpb.ClusterLoadAssignment{}
		if err := r.UnmarshalTo(cla); err != nil {
			return nil, fmt.Errorf("httpxds: endpoints: %w", err)
		}
		if cla.GetClusterName() != name {
			continue
		}
		eps := []Endpoint{}
		for _, loc := range cla.GetEndpoints() {
			for _, lb := range loc.GetLbEndpoints() {
				switch lb.GetHealthStatus() {
				case corepb.HealthStatus_UNKNOWN, corepb.HealthStatus_HEALTHY:
				default:
					continue
				}
				sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
				if sa == nil {
					return nil, fmt.Errorf("httpxds: endpoints of %q: an endpoint without a socket address", name)
				}
				w := lb.GetLoadBalancingWeight().GetValue()
				if w == 0 {
					w = 1
				}
				eps = append(eps, Endpoint{Addr: net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))), Weight: w})
			}
		}
		slices.SortFunc(eps, func(a, b Endpoint) int {
			if a.Addr < b.Addr {
				return -1
			}
			if a.Addr > b.Addr {
				return 1
			}
			return 0
		})
		return eps, nil
	}
	return nil, nil
}
