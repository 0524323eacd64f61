package controlplane

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigpb "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommonpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	rbacpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlspb "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherpb "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typepb "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/gridmesh/gridmesh/internal/xdsname"
)

// ServerListenerName is the name of the server-side Listener resource for a
// server with SPIFFE ID spiffeID listening on addr (host:port):
// "grpc/server/<trust-domain>/<path>?xds.resource.listening_address=<addr>", the
// template the mesh's bootstrap sets for a server of that identity. Under
// mTLS meshd sends it only on a stream authenticated as spiffeID. Without
// an ID it is grpc-go's default name, which meshd sends to no one under
// mTLS.
func ServerListenerName(spiffeID, addr string) string {
	return fmt.Sprintf(xdsname.ServerListenerTemplateFor(spiffeID), addr)
}

// VersionCluster names the cluster of one version of a service:
// "<service>/<version>". The cluster of the whole service is its name.
func VersionCluster(service, version string) string { return service + "/" + version }

const (
	faultFilterName  = "envoy.filters.http.fault"
	rbacFilterName   = "envoy.filters.http.rbac"
	routerFilterName = "envoy.filters.http.router"
)

// Snapshot is the set of xDS resources built from one set of inputs. Its
// versions are content hashes, so two meshd replicas over the same inputs
// build identical snapshots with identical versions. A Snapshot is
// immutable and safe for concurrent use.
type Snapshot struct {
	// Version identifies the whole snapshot (a hash of the per-type
	// versions).
	Version   string
	Listeners []*listenerpb.Listener
	Routes    []*routepb.RouteConfiguration
	Clusters  []*clusterpb.Cluster
	Endpoints []*endpointpb.ClusterLoadAssignment
	// TypeVersions maps each type URL to the hash of its resources.
	TypeVersions map[string]string
}

// BuildSnapshot builds the xDS resources for cfg and the endpoints from
// dynamic sources (registration, Consul). cfg must have passed validation
// (ParseConfig or Server.SetConfig do that); nil means an empty config.
// Services named only by endpoints get default settings. Endpoints are
// de-duplicated per service and address; a later one wins.
func BuildSnapshot(cfg *Config, endpoints []Endpoint) (*Snapshot, error) {
	if cfg == nil {
		cfg = &Config{}
	}
	services := map[string]*Service{}
	var names []string
	for i := range cfg.Services {
		s := &cfg.Services[i]
		services[s.Name] = s
		names = append(names, s.Name)
	}
	eps := map[string]map[string]Endpoint{} // service → address → endpoint
	add := func(e Endpoint) {
		if eps[e.Service] == nil {
			eps[e.Service] = map[string]Endpoint{}
		}
		eps[e.Service][e.Address] = e
	}
	for _, s := range cfg.Services {
		for _, a := range s.Endpoints {
			addr, _ := endpointAddress(a, s.Port)
			add(Endpoint{Service: s.Name, Address: addr, SPIFFEID: s.SPIFFEID})
		}
		for _, v := range s.Versions {
			for _, a := range v.Endpoints {
				addr, _ := endpointAddress(a, s.Port)
				add(Endpoint{Service: s.Name, Version: v.Name, Address: addr, SPIFFEID: s.SPIFFEID})
			}
		}
	}
	for _, e := range endpoints {
		if e.Service == "" || e.Address == "" {
			return nil, fmt.Errorf("controlplane: endpoint %+v lacks a service or an address", e)
		}
		add(e)
		if _, ok := services[e.Service]; !ok {
			services[e.Service] = &Service{Name: e.Service}
			names = append(names, e.Service)
		}
	}
	sort.Strings(names)

	b := &builder{mtls: cfg.MTLS}
	listenerOwner := map[string]string{}
	made := map[string]bool{} // server listener names
	for _, name := range names {
		s := services[name]
		var list []Endpoint
		for _, e := range eps[name] {
			list = append(list, e)
		}
		sort.Slice(list, func(i, j int) bool { return list[i].Address < list[j].Address })
		if err := checkEndpointWeights(name, list); err != nil {
			return nil, err
		}
		if err := b.service(s, list); err != nil {
			return nil, err
		}
		for _, e := range list {
			la := e.ListenAddress
			if la == "" {
				la = e.Address
			}
			if owner, ok := listenerOwner[la]; ok && owner != name {
				return nil, fmt.Errorf("controlplane: %s is a listener of both %q and %q; an address serves one service", la, owner, name)
			}
			listenerOwner[la] = name
			ln := ServerListenerName(e.SPIFFEID, la)
			if made[ln] {
				continue
			}
			made[ln] = true
			l, err := b.serverListener(s, ln, la)
			if err != nil {
				return nil, err
			}
			b.snap.Listeners = append(b.snap.Listeners, l)
		}
	}
	sort.Slice(b.snap.Listeners, func(i, j int) bool { return b.snap.Listeners[i].Name < b.snap.Listeners[j].Name })
	sort.Slice(b.snap.Clusters, func(i, j int) bool { return b.snap.Clusters[i].Name < b.snap.Clusters[j].Name })
	sort.Slice(b.snap.Endpoints, func(i, j int) bool {
		return b.snap.Endpoints[i].ClusterName < b.snap.Endpoints[j].ClusterName
	})
	if err := b.snap.hash(); err != nil {
		return nil, err
	}
	return &b.snap, nil
}

type builder struct {
	mtls bool
	snap Snapshot
}

func (b *builder) service(s *Service, eps []Endpoint) error {
	hasFault := false
	for _, r := range s.Routes {
		hasFault = hasFault || r.Fault != nil
	}
	var filters []*hcmpb.HttpFilter
	if hasFault {
		filters = append(filters, httpFilter(faultFilterName, &faultpb.HTTPFault{}))
	}
	filters = append(filters, httpFilter(routerFilterName, &routerpb.Router{}))
	hcm := &hcmpb.HttpConnectionManager{
		StatPrefix: s.Name,
		RouteSpecifier: &hcmpb.HttpConnectionManager_Rds{Rds: &hcmpb.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: s.Name,
		}},
		HttpFilters: filters,
	}
	b.snap.Listeners = append(b.snap.Listeners, &listenerpb.Listener{
		Name:        s.Name,
		ApiListener: &listenerpb.ApiListener{ApiListener: mustAny(hcm)},
	})

	var routes []*routepb.Route
	catchAll := false
	for i := range s.Routes {
		r, err := b.route(s, &s.Routes[i], i)
		if err != nil {
			return err
		}
		routes = append(routes, r)
		m := s.Routes[i].Match
		catchAll = catchAll || (m.Method == "" && m.Prefix == "" && len(m.Headers) == 0)
	}
	if !catchAll {
		r, err := b.route(s, &Route{Name: "default"}, -1)
		if err != nil {
			return err
		}
		routes = append(routes, r)
	}
	if len(s.Versions) > 0 {
		routes = append(routes, warmRoute(s))
	}
	b.snap.Routes = append(b.snap.Routes, &routepb.RouteConfiguration{
		Name: s.Name,
		VirtualHosts: []*routepb.VirtualHost{{
			Name:    s.Name,
			Domains: []string{"*"},
			Routes:  routes,
		}},
	})

	// One cluster for the whole service, one per declared version.
	b.cluster(s, s.Name, eps)
	for _, v := range s.Versions {
		var sub []Endpoint
		for _, e := range eps {
			if e.Version == v.Name {
				sub = append(sub, e)
			}
		}
		b.cluster(s, VersionCluster(s.Name, v.Name), sub)
	}
	return nil
}

func (b *builder) route(s *Service, r *Route, idx int) (*routepb.Route, error) {
	name := r.Name
	if name == "" {
		name = "route-" + strconv.Itoa(idx)
	}
	match := &routepb.RouteMatch{PathSpecifier: &routepb.RouteMatch_Prefix{Prefix: "/"}}
	switch {
	case r.Match.Method != "":
		match.PathSpecifier = &routepb.RouteMatch_Path{Path: r.Match.Method}
	case r.Match.Prefix != "":
		match.PathSpecifier = &routepb.RouteMatch_Prefix{Prefix: r.Match.Prefix}
	}
	for _, h := range r.Match.Headers {
		hm := &routepb.HeaderMatcher{Name: h.Name, InvertMatch: h.Invert}
		switch {
		case h.Exact != "":
			hm.HeaderMatchSpecifier = &routepb.HeaderMatcher_StringMatch{StringMatch: &matcherpb.StringMatcher{
				MatchPattern: &matcherpb.StringMatcher_Exact{Exact: h.Exact}}}
		case h.Prefix != "":
			hm.HeaderMatchSpecifier = &routepb.HeaderMatcher_StringMatch{StringMatch: &matcherpb.StringMatcher{
				MatchPattern: &matcherpb.StringMatcher_Prefix{Prefix: h.Prefix}}}
		case h.Regex != "":
			hm.HeaderMatchSpecifier = &routepb.HeaderMatcher_StringMatch{StringMatch: &matcherpb.StringMatcher{
				MatchPattern: &matcherpb.StringMatcher_SafeRegex{SafeRegex: &matcherpb.RegexMatcher{Regex: h.Regex}}}}
		default:
			hm.HeaderMatchSpecifier = &routepb.HeaderMatcher_PresentMatch{PresentMatch: true}
		}
		match.Headers = append(match.Headers, hm)
	}

	action := &routepb.RouteAction{}
	switch {
	case len(r.Split) > 0:
		wc := &routepb.WeightedCluster{}
		for _, w := range r.Split {
			wc.Clusters = append(wc.Clusters, &routepb.WeightedCluster_ClusterWeight{
				Name:   VersionCluster(s.Name, w.Version),
				Weight: wrapperspb.UInt32(w.Weight),
			})
		}
		action.ClusterSpecifier = &routepb.RouteAction_WeightedClusters{WeightedClusters: wc}
	case r.Version != "":
		action.ClusterSpecifier = &routepb.RouteAction_Cluster{Cluster: VersionCluster(s.Name, r.Version)}
	default:
		action.ClusterSpecifier = &routepb.RouteAction_Cluster{Cluster: s.Name}
	}
	timeout := r.Timeout
	if timeout == 0 {
		timeout = s.Timeout
	}
	if timeout > 0 {
		action.MaxStreamDuration = &routepb.RouteAction_MaxStreamDuration{MaxStreamDuration: durationpb.New(timeout)}
	}
	retry := r.Retry
	if retry == nil {
		retry = s.Retry
	}
	if retry != nil {
		action.RetryPolicy = retryPolicy(retry)
	}
	if s.LB == "ring_hash" {
		if s.HashHeader != "" {
			action.HashPolicy = []*routepb.RouteAction_HashPolicy{{PolicySpecifier: &routepb.RouteAction_HashPolicy_Header_{
				Header: &routepb.RouteAction_HashPolicy_Header{HeaderName: s.HashHeader}}}}
		} else {
			action.HashPolicy = []*routepb.RouteAction_HashPolicy{{PolicySpecifier: &routepb.RouteAction_HashPolicy_FilterState_{
				FilterState: &routepb.RouteAction_HashPolicy_FilterState{Key: "io.grpc.channel_id"}}}}
		}
	}
	out := &routepb.Route{
		Name:   name,
		Match:  match,
		Action: &routepb.Route_Route{Route: action},
	}
	if f := r.Fault; f != nil {
		hf := &faultpb.HTTPFault{}
		if d := f.Delay; d != nil {
			hf.Delay = &faultcommonpb.FaultDelay{
				FaultDelaySecifier: &faultcommonpb.FaultDelay_FixedDelay{FixedDelay: durationpb.New(d.Duration)},
				Percentage:         fraction(d.Percent),
			}
		}
		if a := f.Abort; a != nil {
			code, _ := grpcCode(a.Code)
			hf.Abort = &faultpb.FaultAbort{
				ErrorType:  &faultpb.FaultAbort_GrpcStatus{GrpcStatus: uint32(code)},
				Percentage: fraction(a.Percent),
			}
		}
		out.TypedPerFilterConfig = map[string]*anypb.Any{faultFilterName: mustAny(hf)}
	}
	return out, nil
}

// warmRoute is a route no call reaches (a catch-all precedes it) that names
// every cluster of the service. grpc-go keeps a cluster's balancer only
// while some route names it, and it swaps in a new route table before the
// balancer for a newly named cluster exists, so calls in that window fail
// with "unknown cluster selected for RPC". Naming every version's cluster
// all the time keeps them warm: moving a route between versions (promoting
// a canary) is then seamless. The cost is that clients connect to every
// version's endpoints.
func warmRoute(s *Service) *routepb.Route {
	wc := &routepb.WeightedCluster{Clusters: []*routepb.WeightedCluster_ClusterWeight{{Name: s.Name, Weight: wrapperspb.UInt32(1)}}}
	for _, v := range s.Versions {
		wc.Clusters = append(wc.Clusters, &routepb.WeightedCluster_ClusterWeight{Name: VersionCluster(s.Name, v.Name), Weight: wrapperspb.UInt32(1)})
	}
	return &routepb.Route{
		Name:   "gridmesh-warm-clusters",
		Match:  &routepb.RouteMatch{PathSpecifier: &routepb.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routepb.Route_Route{Route: &routepb.RouteAction{ClusterSpecifier: &routepb.RouteAction_WeightedClusters{WeightedClusters: wc}}},
	}
}

func retryPolicy(r *RetryPolicy) *routepb.RetryPolicy {
	on := r.On
	if len(on) == 0 {
		on = []string{"unavailable"}
	}
	attempts := r.Attempts
	if attempts == 0 {
		attempts = 2
	}
	p := &routepb.RetryPolicy{
		RetryOn:    strings.Join(on, ","),
		NumRetries: wrapperspb.UInt32(attempts),
	}
	if r.BaseInterval > 0 || r.MaxInterval > 0 {
		p.RetryBackOff = &routepb.RetryPolicy_RetryBackOff{}
		if r.BaseInterval > 0 {
			p.RetryBackOff.BaseInterval = durationpb.New(r.BaseInterval)
		} else {
			// grpc-go requires base_interval when retry_back_off is set.
			p.RetryBackOff.BaseInterval = durationpb.New(25e6)
		}
		if r.MaxInterval > 0 {
			p.RetryBackOff.MaxInterval = durationpb.New(r.MaxInterval)
		}
	}
	return p
}

// fraction turns a percentage into a FractionalPercent per million, so
// 0.5% is exact.
func fraction(percent float64) *typepb.FractionalPercent {
	return &typepb.FractionalPercent{
		Numerator:   uint32(percent*10000 + 0.5),
		Denominator: typepb.FractionalPercent_MILLION,
	}
}

func (b *builder) cluster(s *Service, name string, eps []Endpoint) {
	c := &clusterpb.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterpb.Cluster_Type{Type: clusterpb.Cluster_EDS},
		EdsClusterConfig:     &clusterpb.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: name},
	}
	switch s.LB {
	case "least_request":
		c.LbPolicy = clusterpb.Cluster_LEAST_REQUEST
	case "ring_hash":
		c.LbPolicy = clusterpb.Cluster_RING_HASH
	default:
		c.LbPolicy = clusterpb.Cluster_ROUND_ROBIN
	}
	if cb := s.CircuitBreaker; cb != nil {
		c.CircuitBreakers = &clusterpb.CircuitBreakers{Thresholds: []*clusterpb.CircuitBreakers_Thresholds{{
			Priority:    corepb.RoutingPriority_DEFAULT,
			MaxRequests: wrapperspb.UInt32(cb.MaxRequests),
		}}}
	}
	if od := s.OutlierDetection; od != nil {
		c.OutlierDetection = outlierDetection(od)
	}
	if b.mtls {
		var sans []*matcherpb.StringMatcher
		seen := map[string]bool{}
		for _, e := range eps {
			if e.SPIFFEID != "" && !seen[e.SPIFFEID] {
				seen[e.SPIFFEID] = true
				sans = append(sans, &matcherpb.StringMatcher{MatchPattern: &matcherpb.StringMatcher_Exact{Exact: e.SPIFFEID}})
			}
		}
		slices.SortFunc(sans, func(a, b *matcherpb.StringMatcher) int { return strings.Compare(a.GetExact(), b.GetExact()) })
		c.TransportSocket = transportSocket(&tlspb.UpstreamTlsContext{CommonTlsContext: commonTLS(sans)})
	}
	b.snap.Clusters = append(b.snap.Clusters, c)

	cla := &endpointpb.ClusterLoadAssignment{ClusterName: name}
	if len(eps) > 0 {
		loc := &endpointpb.LocalityLbEndpoints{
			Locality:            &corepb.Locality{Region: "gridmesh"},
			LoadBalancingWeight: wrapperspb.UInt32(1),
		}
		for _, e := range eps {
			host, port, _ := net.SplitHostPort(e.Address)
			p, _ := strconv.Atoi(port)
			w := e.Weight
			if w == 0 {
				w = 1
			}
			loc.LbEndpoints = append(loc.LbEndpoints, &endpointpb.LbEndpoint{
				HostIdentifier: &endpointpb.LbEndpoint_Endpoint{Endpoint: &endpointpb.Endpoint{
					Address: socketAddress(host, uint32(p)),
				}},
				HealthStatus:        healthStatus(e.Health),
				LoadBalancingWeight: wrapperspb.UInt32(w),
			})
		}
		cla.Endpoints = []*endpointpb.LocalityLbEndpoints{loc}
	}
	b.snap.Endpoints = append(b.snap.Endpoints, cla)
}

// healthStatus is the EDS health status of h. grpc-go balances over
// HEALTHY (and UNKNOWN) endpoints only.
func healthStatus(h EndpointHealth) corepb.HealthStatus {
	switch h {
	case HealthDraining:
		return corepb.HealthStatus_DRAINING
	case HealthUnhealthy:
		return corepb.HealthStatus_UNHEALTHY
	default:
		return corepb.HealthStatus_HEALTHY
	}
}

func outlierDetection(od *OutlierDetection) *clusterpb.OutlierDetection {
	o := &clusterpb.OutlierDetection{
		// grpc-go implements success-rate and failure-percentage ejection;
		// meshd configures failure percentage, the one that works with few
		// endpoints. enforcing_success_rate 0 turns success rate off.
		EnforcingSuccessRate:       wrapperspb.UInt32(0),
		EnforcingFailurePercentage: wrapperspb.UInt32(100),
	}
	if od.Interval > 0 {
		o.Interval = durationpb.New(od.Interval)
	}
	if od.BaseEjectionTime > 0 {
		o.BaseEjectionTime = durationpb.New(od.BaseEjectionTime)
	}
	if od.MaxEjectionPercent > 0 {
		o.MaxEjectionPercent = wrapperspb.UInt32(od.MaxEjectionPercent)
	}
	if od.FailurePercentThreshold > 0 {
		o.FailurePercentageThreshold = wrapperspb.UInt32(od.FailurePercentThreshold)
	}
	if od.MinimumHosts > 0 {
		o.FailurePercentageMinimumHosts = wrapperspb.UInt32(od.MinimumHosts)
	}
	if od.RequestVolume > 0 {
		o.FailurePercentageRequestVolume = wrapperspb.UInt32(od.RequestVolume)
	}
	return o
}

func (b *builder) serverListener(s *Service, name, addr string) (*listenerpb.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("controlplane: listen address %q: %w", addr, err)
	}
	p, _ := strconv.Atoi(port)
	var filters []*hcmpb.HttpFilter
	if len(s.Authorization) > 0 {
		filters = append(filters, httpFilter(rbacFilterName, rbacConfig(s)))
	}
	filters = append(filters, httpFilter(routerFilterName, &routerpb.Router{}))
	hcm := &hcmpb.HttpConnectionManager{
		StatPrefix: s.Name,
		RouteSpecifier: &hcmpb.HttpConnectionManager_RouteConfig{RouteConfig: &routepb.RouteConfiguration{
			Name: "inbound|" + s.Name,
			VirtualHosts: []*routepb.VirtualHost{{
				Name:    s.Name,
				Domains: []string{"*"},
				Routes: []*routepb.Route{{
					Match:  &routepb.RouteMatch{PathSpecifier: &routepb.RouteMatch_Prefix{Prefix: "/"}},
					Action: &routepb.Route_NonForwardingAction{NonForwardingAction: &routepb.NonForwardingAction{}},
				}},
			}},
		}},
		HttpFilters: filters,
	}
	chain := &listenerpb.FilterChain{
		Name: "inbound|" + s.Name,
		Filters: []*listenerpb.Filter{{
			Name:       "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerpb.Filter_TypedConfig{TypedConfig: mustAny(hcm)},
		}},
	}
	if b.mtls {
		chain.TransportSocket = transportSocket(&tlspb.DownstreamTlsContext{
			RequireClientCertificate: wrapperspb.Bool(true),
			CommonTlsContext:         commonTLS(nil),
		})
	}
	return &listenerpb.Listener{
		Name:         name,
		Address:      socketAddress(host, uint32(p)),
		FilterChains: []*listenerpb.FilterChain{chain},
	}, nil
}

// rbacConfig turns a service's policies into an ALLOW RBAC filter: a call
// no policy matches is denied.
func rbacConfig(s *Service) *rbacpb.RBAC {
	policies := map[string]*rbacconfigpb.Policy{}
	for i, p := range s.Authorization {
		name := p.Name
		if name == "" {
			name = "policy-" + strconv.Itoa(i)
		}
		pol := &rbacconfigpb.Policy{}
		principal := func(sm *matcherpb.StringMatcher) *rbacconfigpb.Principal {
			return &rbacconfigpb.Principal{Identifier: &rbacconfigpb.Principal_Authenticated_{
				Authenticated: &rbacconfigpb.Principal_Authenticated{PrincipalName: sm}}}
		}
		for _, src := range p.Sources {
			match, prefix, _ := parseSource(src)
			switch {
			case !prefix:
				pol.Principals = append(pol.Principals, principal(&matcherpb.StringMatcher{MatchPattern: &matcherpb.StringMatcher_Exact{Exact: match}}))
			case match == "":
				pol.Principals = append(pol.Principals, principal(&matcherpb.StringMatcher{MatchPattern: &matcherpb.StringMatcher_Prefix{Prefix: "spiffe://"}}))
			default:
				// "spiffe://td/ops/*" matches spiffe://td/ops and the IDs
				// under it, like security.PathPrefix; "spiffe://td/*" every
				// ID of td.
				pol.Principals = append(pol.Principals, principal(&matcherpb.StringMatcher{MatchPattern: &matcherpb.StringMatcher_Prefix{Prefix: match}}))
				if base := strings.TrimSuffix(match, "/"); strings.Count(base, "/") > 2 {
					pol.Principals = append(pol.Principals, principal(&matcherpb.StringMatcher{MatchPattern: &matcherpb.StringMatcher_Exact{Exact: base}}))
				}
			}
		}
		for _, m := range p.Methods {
			if m == "*" {
				pol.Permissions = nil
				break
			}
			sm := &matcherpb.StringMatcher{MatchPattern: &matcherpb.StringMatcher_Exact{Exact: m}}
			if base, ok := strings.CutSuffix(m, "*"); ok {
				sm = &matcherpb.StringMatcher{MatchPattern: &matcherpb.StringMatcher_Prefix{Prefix: base}}
			}
			pol.Permissions = append(pol.Permissions, &rbacconfigpb.Permission{Rule: &rbacconfigpb.Permission_UrlPath{
				UrlPath: &matcherpb.PathMatcher{Rule: &matcherpb.PathMatcher_Path{Path: sm}}}})
		}
		if len(pol.Permissions) == 0 {
			pol.Permissions = []*rbacconfigpb.Permission{{Rule: &rbacconfigpb.Permission_Any{Any: true}}}
		}
		policies[name] = pol
	}
	return &rbacpb.RBAC{Rules: &rbacconfigpb.RBAC{Action: rbacconfigpb.RBAC_ALLOW, Policies: policies}}
}

func commonTLS(sans []*matcherpb.StringMatcher) *tlspb.CommonTlsContext {
	inst := &tlspb.CertificateProviderPluginInstance{InstanceName: xdsname.CertProviderInstance}
	return &tlspb.CommonTlsContext{
		TlsCertificateProviderInstance: inst,
		ValidationContextType: &tlspb.CommonTlsContext_ValidationContext{ValidationContext: &tlspb.CertificateValidationContext{
			CaCertificateProviderInstance: inst,
			MatchSubjectAltNames:          sans,
		}},
	}
}

func transportSocket(m proto.Message) *corepb.TransportSocket {
	return &corepb.TransportSocket{
		Name:       "envoy.transport_sockets.tls",
		ConfigType: &corepb.TransportSocket_TypedConfig{TypedConfig: mustAny(m)},
	}
}

func socketAddress(host string, port uint32) *corepb.Address {
	return &corepb.Address{Address: &corepb.Address_SocketAddress{SocketAddress: &corepb.SocketAddress{
		Protocol:      corepb.SocketAddress_TCP,
		Address:       host,
		PortSpecifier: &corepb.SocketAddress_PortValue{PortValue: port},
	}}}
}

func adsSource() *corepb.ConfigSource {
	return &corepb.ConfigSource{
		ResourceApiVersion:    corepb.ApiVersion_V3,
		ConfigSourceSpecifier: &corepb.ConfigSource_Ads{Ads: &corepb.AggregatedConfigSource{}},
	}
}

func httpFilter(name string, m proto.Message) *hcmpb.HttpFilter {
	return &hcmpb.HttpFilter{Name: name, ConfigType: &hcmpb.HttpFilter_TypedConfig{TypedConfig: mustAny(m)}}
}

// mustAny packs m with a deterministic encoding: anypb.New's default
// encoding orders map entries (RBAC policies) at random, which would give
// one input different versions from build to build and replica to replica.
func mustAny(m proto.Message) *anypb.Any {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		panic(fmt.Sprintf("controlplane: marshal %T: %v", m, err)) // only on a programming error
	}
	return a
}

// hash sets the per-type versions and the snapshot version from a
// deterministic encoding of the resources.
func (s *Snapshot) hash() error {
	opts := proto.MarshalOptions{Deterministic: true}
	sum := func(msgs []proto.Message) (string, error) {
		h := sha256.New()
		for _, m := range msgs {
			b, err := opts.Marshal(m)
			if err != nil {
				return "", fmt.Errorf("controlplane: hash %T: %w", m, err)
			}
			fmt.Fprintf(h, "%d:", len(b))
			h.Write(b)
		}
		return hex.EncodeToString(h.Sum(nil))[:16], nil
	}
	s.TypeVersions = map[string]string{}
	all := sha256.New()
	for _, t := range []struct {
		url  string
		msgs []proto.Message
	}{
		{resourcev3.ListenerType, toMsgs(s.Listeners)},
		{resourcev3.RouteType, toMsgs(s.Routes)},
		{resourcev3.ClusterType, toMsgs(s.Clusters)},
		{resourcev3.EndpointType, toMsgs(s.Endpoints)},
	} {
		v, err := sum(t.msgs)
		if err != nil {
			return err
		}
		s.TypeVersions[t.url] = v
		all.Write([]byte(t.url + "=" + v + ";"))
	}
	s.Version = hex.EncodeToString(all.Sum(nil))[:16]
	return nil
}

func toMsgs[T proto.Message](in []T) []proto.Message {
	out := make([]proto.Message, len(in))
	for i, m := range in {
		out[i] = m
	}
	return out
}

func toResources[T types.Resource](in []T) []types.Resource {
	out := make([]types.Resource, len(in))
	for i, m := range in {
		out[i] = m
	}
	return out
}

// cacheSnapshot converts s for go-control-plane's snapshot cache, with a
// version per type so an endpoint change re-sends only endpoints.
func (s *Snapshot) cacheSnapshot() *cachev3.Snapshot {
	out := &cachev3.Snapshot{}
	set := func(url string, rs []types.Resource) {
		out.Resources[cachev3.GetResponseType(url)] = cachev3.NewResources(s.TypeVersions[url], rs)
	}
	set(resourcev3.ListenerType, toResources(s.Listeners))
	set(resourcev3.RouteType, toResources(s.Routes))
	set(resourcev3.ClusterType, toResources(s.Clusters))
	set(resourcev3.EndpointType, toResources(s.Endpoints))
	return out
}
