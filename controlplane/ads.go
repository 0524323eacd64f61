package controlplane

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// adsServer serves ADS (state of the world, as grpc-go's xDS client
// speaks it) from the snapshot in force, with a stream loop of meshd's
// own instead of go-control-plane's: what meshd keeps per client is what
// bench/xds measures, and go-control-plane's loop costs a second goroutine
// (its request receiver), a watch and a channel per type and a
// reflect.Select per response on every stream.
//
// Per stream, the gRPC handler goroutine reads requests and updates the
// stream's subscriptions; responses are sent by a goroutine that exists
// only while the stream has something to send (push). A stream whose
// client stops reading blocks only its own push goroutine: no lock is held
// and no shared channel is used while sending, so the others go on.
//
// Resources are marshalled once per snapshot, and each response once per
// snapshot, subscription and compression (adsType.encoded), shared by every
// stream that wants it.
type adsServer struct {
	discoverypb.UnimplementedAggregatedDiscoveryServiceServer
	s *Server

	cur    atomic.Pointer[adsSnapshot] // nil until the first snapshot is published
	nonces atomic.Uint64               // response nonces, unique across snapshots

	mu      sync.Mutex
	streams map[*adsStream]struct{}
}

// adsTypes are the types meshd serves, in the order a push sends them:
// clusters and their endpoints before the listeners and routes that refer
// to them.
var adsTypes = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}

// adsSnapshot is a snapshot's resources, marshalled, by type.
type adsSnapshot struct {
	types [4]adsType // as adsTypes
}

type adsType struct {
	version string
	byName  map[string]*anypb.Any
	all     []*anypb.Any // sorted by name, for wildcard subscriptions

	// Responses encoded once and sent as they are to every stream that
	// subscribed to the same names: 10,000 clients of one service cost
	// one encoding per snapshot, not 10,000.
	mu      sync.Mutex
	encoded map[adsKey]*adsEncoded
}

// maxEncodedPerType bounds the encoded responses a snapshot keeps per type.
const maxEncodedPerType = 4096

// adsKey names one encoded response of a type: the subscription's names
// and the stream's compression (an encoding is compressed for its stream).
type adsKey struct {
	names      string // joined by NUL
	wildcard   bool
	compressor string
}

// adsEncoded is one response, encoded on first use. Its nonce is shared by
// every stream it goes to; within a stream it names this content only.
type adsEncoded struct {
	once  sync.Once
	nonce string
	msg   *grpc.PreparedMsg
	err   error
}

// response returns the encoded response of t for names, encoding it on
// first use with stream's codec and compressor.
func (a *adsServer) response(t *adsType, typeIndex int, names []string, compressor string, stream grpc.ServerStream) (*adsEncoded, error) {
	key := adsKey{names: strings.Join(names, "\x00"), wildcard: len(names) == 0, compressor: compressor}
	t.mu.Lock()
	e := t.encoded[key]
	if e == nil {
		if t.encoded == nil {
			t.encoded = map[adsKey]*adsEncoded{}
		}
		e = &adsEncoded{nonce: strconv.FormatUint(a.nonces.Add(1), 10)}
		// Clients choose their names: past maxEncodedPerType distinct
		// subscriptions a response is encoded for its stream alone, so
		// that odd subscriptions cannot grow the snapshot without bound.
		if len(t.encoded) < maxEncodedPerType {
			t.encoded[key] = e
		}
	}
	t.mu.Unlock()
	e.once.Do(func() {
		resp := &discoverypb.DiscoveryResponse{
			VersionInfo: t.version, TypeUrl: adsTypes[typeIndex],
			Nonce: e.nonce, Resources: t.pick(names, adsTypes[typeIndex]),
		}
		e.msg = &grpc.PreparedMsg{}
		if err := e.msg.Encode(stream, resp); err != nil {
			e.err = fmt.Errorf("controlplane: encode %s response: %w", adsTypes[typeIndex], err)
		}
	})
	return e, e.err
}

func (a *adsSnapshot) typ(url string) *adsType {
	if i := slices.Index(adsTypes, url); i >= 0 {
		return &a.types[i]
	}
	return nil
}

func newADSServer(s *Server) *adsServer {
	return &adsServer{s: s, streams: map[*adsStream]struct{}{}}
}

// publish makes sn the snapshot served and wakes every stream. It does not
// block on any stream.
func (a *adsServer) publish(sn *Snapshot) error {
	next := &adsSnapshot{}
	add := func(i int, msgs []proto.Message) error {
		t := &next.types[i]
		t.version = sn.TypeVersions[adsTypes[i]]
		t.byName = make(map[string]*anypb.Any, len(msgs))
		for _, m := range msgs {
			anyMsg, err := anypb.New(m)
			if err != nil {
				return fmt.Errorf("controlplane: marshal %s: %w", adsTypes[i], err)
			}
			name := resourceName(m)
			t.byName[name] = anyMsg
			t.all = append(t.all, anyMsg)
		}
		return nil
	}
	for i, msgs := range [][]proto.Message{toMsgs(sn.Clusters), toMsgs(sn.Endpoints), toMsgs(sn.Listeners), toMsgs(sn.Routes)} {
		if err := add(i, msgs); err != nil {
			return err
		}
	}
	a.cur.Store(next)
	a.mu.Lock()
	defer a.mu.Unlock()
	for st := range a.streams {
		st.kick()
	}
	return nil
}

// resourceName is the xDS name of a resource meshd builds.
func resourceName(m proto.Message) string {
	type named interface{ GetName() string }
	type cla interface{ GetClusterName() string }
	switch r := m.(type) {
	case cla:
		return r.GetClusterName()
	case named:
		return r.GetName()
	}
	return ""
}

// adsStream is one ADS stream.
type adsStream struct {
	a      *adsServer
	stream discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesServer

	// compressor is the stream's response compression (its request's
	// grpc-encoding, which grpc-go answers with), part of an encoded
	// response's key.
	compressor string

	mu       sync.Mutex
	subs     [4]adsSub // as adsTypes
	node     string    // from the first request: what the client says, not trusted
	peer     string    // the verified SPIFFE ID of the stream's connection ("" in plaintext)
	since    time.Time
	nacks    int
	lastNACK string
	sending  bool          // a push goroutine is running
	closed   bool          // the handler is returning: start no push
	idle     chan struct{} // closed by the push goroutine when it ends, if not nil
}

// adsSub is a stream's subscription to one type.
type adsSub struct {
	subscribed bool
	names      []string // nil with subscribed: wildcard (LDS and CDS only)
	sent       string   // version last sent, or the client said it has
	nonce      string   // of the last response sent
	want       bool     // names changed: send even if the version is the same
}

// StreamAggregatedResources serves one ADS stream until the client ends it
// or the server stops.
//
// Under mTLS the stream is served as the SPIFFE ID its connection was
// verified as (see Server.restrict), whatever node ID it sends.
func (a *adsServer) StreamAggregatedResources(stream discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	peer, err := a.s.streamIdentity(stream.Context())
	if err != nil {
		return err
	}
	a.mu.Lock()
	st := &adsStream{a: a, stream: stream, since: time.Now(), peer: peer}
	if md, ok := metadata.FromIncomingContext(stream.Context()); ok {
		if enc := md.Get("grpc-encoding"); len(enc) > 0 {
			st.compressor = enc[0]
		}
	}
	a.streams[st] = struct{}{}
	a.mu.Unlock()
	a.s.stats.streams.Add(1)
	defer func() {
		a.mu.Lock()
		delete(a.streams, st)
		a.mu.Unlock()
		st.stop()
	}()
	for {
		req, err := stream.Recv()
		if err != nil {
			return nil // the client went away or the server stops
		}
		if err := st.request(req); err != nil {
			return err
		}
	}
}

// request applies one request to the stream's subscriptions and starts a
// push if it asks for something not sent yet.
func (st *adsStream) request(req *discoverypb.DiscoveryRequest) error {
	s := st.a.s
	i := slices.Index(adsTypes, req.GetTypeUrl())
	if req.GetTypeUrl() == "" {
		return status.Error(codes.InvalidArgument, "controlplane: an ADS request without type_url; name the resource type, like "+resourcev3.ListenerType)
	}
	// What this identity may not see is taken out of the request before
	// it becomes a subscription.
	s.restrict(st.peer, req)
	d := req.GetErrorDetail()
	st.mu.Lock()
	if st.node == "" {
		st.node = req.GetNode().GetId() // sent on a stream's first request only
	}
	node := st.node
	if d != nil {
		st.nacks++
		st.lastNACK = d.GetMessage()
	}
	st.mu.Unlock()
	if d != nil {
		s.stats.nacks.Add(1)
		s.log.Warn("client refused config (NACK)", "identity", st.peer, "node", node,
			"type", req.GetTypeUrl(), "resources", req.GetResourceNames(),
			"version", req.GetVersionInfo(), "reason", d.GetMessage())
	}
	if i < 0 {
		return nil // a type meshd does not serve: never answered
	}
	st.mu.Lock()
	sub := &st.subs[i]
	names := req.GetResourceNames()
	if !sub.subscribed || !slices.Equal(sub.names, names) {
		// A new subscription is answered; a changed one only when it adds
		// a resource the snapshot has (as go-control-plane does): grpc-go
		// subscribes to clusters and endpoints one name at a time, and
		// re-sending what it has would only be noise.
		if cur := st.a.cur.Load(); !sub.subscribed || cur == nil || len(names) == 0 || cur.types[i].hasAny(names, sub.names) {
			sub.want = true
		}
		sub.subscribed = true
		sub.names = slices.Clone(names)
	}
	// A client new to this stream that already has a version (it was
	// served by another replica, or by this one before a reconnect) is
	// sent the type only when the version moves on. A NACK, which carries
	// the version before the refused one, changes nothing here: the
	// refused version is not sent again, the next one will be (the NACK
	// guard).
	if sub.sent == "" && req.GetResponseNonce() == "" && req.GetVersionInfo() != "" {
		if cur := st.a.cur.Load(); cur != nil && cur.types[i].version == req.GetVersionInfo() && sub.want {
			sub.sent = req.GetVersionInfo()
			sub.want = false
		}
	}
	push := sub.want
	if cur := st.a.cur.Load(); cur != nil && cur.types[i].version != sub.sent {
		push = true
	}
	if push {
		st.kickLocked()
	}
	st.mu.Unlock()
	return nil
}

func (st *adsStream) kick() {
	st.mu.Lock()
	st.kickLocked()
	st.mu.Unlock()
}

// kickLocked starts the push goroutine unless it runs; a running one looks
// for work again before it ends. st.mu must be held.
func (st *adsStream) kickLocked() {
	if st.sending || st.closed {
		return
	}
	st.sending = true
	go st.push()
}

// push sends what the stream's subscriptions lack in the snapshot in force,
// until nothing is missing.
func (st *adsStream) push() {
	s := st.a.s
	// failed holds, per type, the version whose response could not be
	// encoded: not tried again by this goroutine (the next snapshot is).
	var failed [4]string
	for {
		// The snapshot is read under st.mu: publish stores a new one before
		// it kicks (which takes st.mu), so either this pass sees it or the
		// kick finds sending false and starts another push.
		if hook := testHookPushLock.Load(); hook != nil {
			(*hook)()
		}
		st.mu.Lock()
		cur := st.a.cur.Load()
		var out [4]*grpc.PreparedMsg
		n := 0
		if cur != nil && !st.closed {
			for i := range st.subs {
				sub := &st.subs[i]
				t := &cur.types[i]
				if !sub.subscribed || (!sub.want && sub.sent == t.version) || failed[i] == t.version {
					continue
				}
				e, err := st.a.response(t, i, sub.names, st.compressor, st.stream)
				if err != nil {
					// Encoding what meshd built does not fail; if it
					// does, say so and leave the type not sent.
					failed[i] = t.version
					s.log.Error("xDS response not sent", "identity", st.peer, "type", adsTypes[i], "err", err)
					continue
				}
				sub.sent, sub.nonce, sub.want = t.version, e.nonce, false
				out[n] = e.msg
				n++
			}
		}
		if n == 0 {
			st.sending = false
			if st.idle != nil {
				close(st.idle)
				st.idle = nil
			}
			st.mu.Unlock()
			return
		}
		st.mu.Unlock()
		for _, msg := range out[:n] {
			if err := st.stream.SendMsg(msg); err != nil {
				// The stream is over; the handler sees it in Recv.
				st.mu.Lock()
				st.closed = true
				st.mu.Unlock()
				break
			}
			s.stats.pushes.Add(1)
		}
	}
}

// testHookPushLock, when set by a test, runs in push just before it takes
// the stream's lock.
var testHookPushLock atomic.Pointer[func()]

// stop makes the stream start no more pushes and waits for a running one
// to end (it ends once its Send returns, which the stream's end makes it
// do).
func (st *adsStream) stop() {
	st.mu.Lock()
	st.closed = true
	var idle chan struct{}
	if st.sending {
		idle = make(chan struct{})
		st.idle = idle
	}
	st.mu.Unlock()
	if idle != nil {
		<-idle
	}
}

// hasAny reports whether a name in names but not in old names a resource
// of t.
func (t *adsType) hasAny(names, old []string) bool {
	for _, n := range names {
		if _, ok := t.byName[n]; ok && !slices.Contains(old, n) {
			return true
		}
	}
	return false
}

// pick returns the resources of names (all of them for a wildcard, nil
// names, on listeners and clusters).
func (t *adsType) pick(names []string, typeURL string) []*anypb.Any {
	if len(names) == 0 {
		if typeURL == resourcev3.ListenerType || typeURL == resourcev3.ClusterType {
			return t.all
		}
		return nil
	}
	out := make([]*anypb.Any, 0, len(names))
	for _, n := range names {
		if r, ok := t.byName[n]; ok {
			out = append(out, r)
		}
	}
	return out
}

// clients returns what each ADS stream subscribed to and was sent (or
// said it had).
func (a *adsServer) clients() []ClientStatus {
	a.mu.Lock()
	streams := make([]*adsStream, 0, len(a.streams))
	for st := range a.streams {
		streams = append(streams, st)
	}
	a.mu.Unlock()
	out := make([]ClientStatus, 0, len(streams))
	for _, st := range streams {
		st.mu.Lock()
		cs := ClientStatus{
			Node: st.node, Identity: st.peer, Since: st.since, NACKs: st.nacks, LastNACK: st.lastNACK,
			Versions: map[string]string{}, Names: map[string][]string{},
		}
		for i, sub := range st.subs {
			if sub.subscribed {
				cs.Versions[adsTypes[i]] = sub.sent
				cs.Names[adsTypes[i]] = slices.Clone(sub.names)
			}
		}
		st.mu.Unlock()
		out = append(out, cs)
	}
	return out
}

func (a *adsServer) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.streams)
}

var _ discoverypb.AggregatedDiscoveryServiceServer = (*adsServer)(nil)
