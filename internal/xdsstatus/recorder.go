package xdsstatus

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	adminpb "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/gridmesh/gridmesh/internal/xdsresource"
)

// The resource types grpc-go's xDS client reads, in the order a dump lists
// them.
const (
	ListenerType = xdsresource.ListenerType
	RouteType    = xdsresource.RouteType
	ClusterType  = xdsresource.ClusterType
	EndpointType = xdsresource.EndpointType
)

var typeOrder = map[string]int{ListenerType: 0, RouteType: 1, ClusterType: 2, EndpointType: 3}

// fullState says which types a state-of-the-world response lists in full:
// a requested name missing from an accepted response does not exist.
var fullState = map[string]bool{ListenerType: true, ClusterType: true}

// adsMethod is the one ADS method; the recorder ignores every other stream.
const adsMethod = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"

// Update is one response from the control plane and the client's answer to
// it.
type Update struct {
	TypeURL string
	Version string
	// Names are the resources the response carried.
	Names []string
	// NACK says the client rejected the response (all of it, or the
	// resources Rejected names); Detail is the client's reason.
	NACK   bool
	Detail string
	// Accepted are the resources the client applied.
	Accepted []Resource
	// Rejected names the resources the client refused.
	Rejected []string
}

// Resource is one decoded xDS resource and its name.
type Resource struct {
	Name    string
	Message proto.Message
}

// Recorder keeps the state of every resource one xDS client subscribed to.
// Create it with New and Close it when the client is gone. Safe for
// concurrent use.
type Recorder struct {
	id       string
	onUpdate func(Update)

	// cbMu keeps onUpdate calls in order and one at a time.
	cbMu sync.Mutex

	mu        sync.Mutex
	node      *corepb.Node
	resources map[resourceKey]*resource
	pending   map[string]*response // by type URL: the last response not yet answered
}

type resourceKey struct{ typeURL, name string }

type resource struct {
	requested bool
	missing   bool // absent from an accepted full-state response, never received

	// last accepted
	have    bool
	version string
	config  *anypb.Any
	updated time.Time

	// last rejected, cleared when a later version is accepted
	failed *adminpb.UpdateFailureState
}

type response struct {
	nonce     string
	version   string
	received  time.Time
	names     []string
	resources []*anypb.Any
}

var (
	registryMu sync.Mutex
	registry   = map[string]*Recorder{}
	nextID     int
)

// New returns a Recorder. onUpdate, when not nil, is called after each
// response has been answered, one call at a time, in order; it must not
// block for long (the xDS client's stream waits on it).
func New(onUpdate func(Update)) *Recorder {
	registryMu.Lock()
	defer registryMu.Unlock()
	nextID++
	r := &Recorder{
		id:        fmt.Sprint(nextID),
		onUpdate:  onUpdate,
		resources: map[resourceKey]*resource{},
		pending:   map[string]*response{},
	}
	registry[r.id] = r
	return r
}

// Close forgets the recorder: a bootstrap naming it no longer finds it.
// Its state stays readable. Safe to call more than once.
func (r *Recorder) Close() error {
	registryMu.Lock()
	defer registryMu.Unlock()
	if registry[r.id] == r {
		delete(registry, r.id)
	}
	return nil
}

// ID is the recorder's key in this process, for Lookup.
func (r *Recorder) ID() string { return r.id }

// Lookup returns the open recorder with id, or nil ("" or closed).
func Lookup(id string) *Recorder { return lookup(id) }

func lookup(id string) *Recorder {
	registryMu.Lock()
	defer registryMu.Unlock()
	return registry[id]
}

// StreamInterceptor returns the client interceptor that records the ADS
// stream. Streams of other methods pass through untouched.
func (r *Recorder) StreamInterceptor() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		s, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil || method != adsMethod {
			return s, err
		}
		r.mu.Lock()
		clear(r.pending) // nonces belong to one stream
		r.mu.Unlock()
		return &recordedStream{ClientStream: s, r: r}, nil
	}
}

type recordedStream struct {
	grpc.ClientStream
	r *Recorder
}

func (s *recordedStream) SendMsg(m any) error {
	if err := s.ClientStream.SendMsg(m); err != nil {
		return err
	}
	var req *discoverypb.DiscoveryRequest
	switch v := m.(type) {
	case *discoverypb.DiscoveryRequest:
		req = v
	case []byte: // grpc-go's xDS client sends marshalled messages
		req = new(discoverypb.DiscoveryRequest)
		if proto.Unmarshal(v, req) != nil {
			return nil
		}
	default:
		return nil
	}
	s.r.sent(req)
	return nil
}

func (s *recordedStream) RecvMsg(m any) error {
	if err := s.ClientStream.RecvMsg(m); err != nil {
		return err
	}
	var resp *discoverypb.DiscoveryResponse
	switch v := m.(type) {
	case *discoverypb.DiscoveryResponse:
		resp = v
	case *[]byte:
		resp = new(discoverypb.DiscoveryResponse)
		if proto.Unmarshal(*v, resp) != nil {
			return nil
		}
	default:
		return nil
	}
	s.r.received(resp)
	return nil
}

// received keeps a response until the client answers it.
func (r *Recorder) received(resp *discoverypb.DiscoveryResponse) {
	p := &response{nonce: resp.GetNonce(), version: resp.GetVersionInfo(), received: time.Now(), resources: resp.GetResources()}
	for _, a := range p.resources {
		p.names = append(p.names, resourceName(a))
	}
	r.mu.Lock()
	r.pending[resp.GetTypeUrl()] = p
	r.mu.Unlock()
}

// sent tracks subscriptions and resolves the response a request answers.
func (r *Recorder) sent(req *discoverypb.DiscoveryRequest) {
	typ := req.GetTypeUrl()
	r.mu.Lock()
	if req.GetNode() != nil {
		r.node = req.GetNode()
	}
	r.subscribe(typ, req.GetResourceNames())
	var u *Update
	if p := r.pending[typ]; p != nil && req.GetResponseNonce() == p.nonce {
		delete(r.pending, typ)
		u = r.answer(typ, p, req.GetErrorDetail().GetMessage(), req.GetErrorDetail() != nil)
	}
	r.mu.Unlock()
	if u != nil && r.onUpdate != nil {
		r.cbMu.Lock()
		defer r.cbMu.Unlock()
		r.onUpdate(*u)
	}
}

// subscribe marks the names requested; in SotW every request carries the
// whole set for its type, so names left out are no longer watched. An
// empty set is a wildcard subscription: everything received stays.
func (r *Recorder) subscribe(typ string, names []string) {
	if len(names) == 0 {
		return
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
		k := resourceKey{typ, n}
		if r.resources[k] == nil {
			r.resources[k] = &resource{}
		}
		r.resources[k].requested = true
	}
	for k := range r.resources {
		if k.typeURL == typ && !want[k.name] {
			delete(r.resources, k)
		}
	}
}

// answer applies the client's ACK or NACK of p. grpc-go applies the valid
// resources of a response it NACKs and names each refused one in the
// reason as `resource "NAME": ...`; when the reason names none of them the
// whole response was refused.
func (r *Recorder) answer(typ string, p *response, detail string, nack bool) *Update {
	u := &Update{TypeURL: typ, Version: p.version, Names: p.names, NACK: nack, Detail: detail}
	refused := map[string]bool{}
	if nack {
		for _, n := range p.names {
			if strings.Contains(detail, fmt.Sprintf("resource %q", n)) {
				refused[n] = true
			}
		}
		if len(refused) == 0 {
			for _, n := range p.names {
				refused[n] = true
			}
		}
	}
	inResponse := map[string]bool{}
	for i, a := range p.resources {
		n := p.names[i]
		inResponse[n] = true
		k := resourceKey{typ, n}
		res := r.resources[k]
		if res == nil {
			res = &resource{} // sent without being named: a wildcard subscription
			r.resources[k] = res
		}
		res.missing = false
		if refused[n] {
			res.failed = &adminpb.UpdateFailureState{
				LastUpdateAttempt:   timestamppb.New(p.received),
				Details:             detail,
				VersionInfo:         p.version,
				FailedConfiguration: a,
			}
			u.Rejected = append(u.Rejected, n)
			continue
		}
		res.have, res.version, res.config, res.updated, res.failed = true, p.version, a, p.received, nil
		if m, err := a.UnmarshalNew(); err == nil {
			u.Accepted = append(u.Accepted, Resource{Name: n, Message: m})
		}
	}
	if !nack && fullState[typ] {
		for k, res := range r.resources {
			if k.typeURL == typ && !inResponse[k.name] && !res.have {
				res.missing = true
			}
		}
	}
	return u
}

// ClientConfig returns what the client holds, in CSDS's shape: one
// GenericXdsConfig per resource it subscribed to or received, with the
// version it accepted, the resource itself and, after a NACK, the refused
// version and the reason. ClientScope is left for the caller.
func (r *Recorder) ClientConfig() *statuspb.ClientConfig {
	r.mu.Lock()
	defer r.mu.Unlock()
	cc := &statuspb.ClientConfig{Node: r.node}
	keys := make([]resourceKey, 0, len(r.resources))
	for k := range r.resources {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b resourceKey) int {
		if d := typeOrder[a.typeURL] - typeOrder[b.typeURL]; d != 0 {
			return d
		}
		return strings.Compare(a.name, b.name)
	})
	for _, k := range keys {
		res := r.resources[k]
		g := &statuspb.ClientConfig_GenericXdsConfig{TypeUrl: k.typeURL, Name: k.name}
		switch {
		case res.failed != nil:
			g.ClientStatus = adminpb.ClientResourceStatus_NACKED
			g.ErrorState = res.failed
		case res.have:
			g.ClientStatus = adminpb.ClientResourceStatus_ACKED
		case res.missing:
			g.ClientStatus = adminpb.ClientResourceStatus_DOES_NOT_EXIST
		default:
			g.ClientStatus = adminpb.ClientResourceStatus_REQUESTED
		}
		if res.have {
			g.VersionInfo = res.version
			g.XdsConfig = res.config
			g.LastUpdated = timestamppb.New(res.updated)
		}
		cc.GenericXdsConfigs = append(cc.GenericXdsConfigs, g)
	}
	return cc
}

// Accepted returns the resources of typeURL the client holds, decoded.
func (r *Recorder) Accepted(typeURL string) []proto.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []proto.Message
	for k, res := range r.resources {
		if k.typeURL != typeURL || !res.have {
			continue
		}
		if m, err := res.config.UnmarshalNew(); err == nil {
			out = append(out, m)
		}
	}
	return out
}

// resourceName is the name the xDS client knows a resource by, "" when
// the resource cannot be decoded.
func resourceName(a *anypb.Any) string {
	m, err := a.UnmarshalNew()
	if err != nil {
		return ""
	}
	switch v := m.(type) {
	case *listenerpb.Listener:
		return v.GetName()
	case *routepb.RouteConfiguration:
		return v.GetName()
	case *clusterpb.Cluster:
		return v.GetName()
	case *endpointpb.ClusterLoadAssignment:
		return v.GetClusterName()
	case *discoverypb.Resource:
		return v.GetName()
	}
	return ""
}
