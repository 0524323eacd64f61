package meshtel

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Pipeline is the telemetry of one mesh server or client: golden metrics
// into Hub, spans through Tracing, call events to Recorder's sinks (the
// admin endpoint). Any of the three may be nil; with all three nil it only
// passes W3C trace context and baggage on. Self is this side's SPIFFE ID.
// Safe for concurrent use once built.
type Pipeline struct {
	Hub      *Hub
	Tracing  *Tracing
	Recorder *Recorder
	Self     string
	// Routed, when set, names the route and cluster an HTTP attempt was
	// routed to (from its request's context), for its span.
	Routed func(context.Context) (route, cluster string)

	// methods is the server's registered methods (SetMethods).
	methods atomic.Pointer[methodSet]
}

// OtherMethod is rpc.method for a call to a method the server does not
// register, or that the caller's generated code does not name: one value
// for all of them, so callers inventing method names cannot grow the
// series (grpc-go's own metrics do the same, spelling it "other"; the
// semantic conventions' spelling is "_OTHER").
const OtherMethod = "_OTHER"

// methodSet is what a server registers: its full methods.
type methodSet struct {
	methods map[string]bool // "/pkg.Service/Method"
}

// SetMethods tells a server's pipeline which methods the server registers
// (grpc.Server.GetServiceInfo): every other method is labelled
// OtherMethod. Call it once the
// services are registered and before the server serves; until then every
// method is taken as registered. Safe for concurrent use.
func (p *Pipeline) SetMethods(services map[string]grpc.ServiceInfo) {
	set := &methodSet{methods: map[string]bool{}}
	for name, info := range services {
		for _, m := range info.Methods {
			set.methods["/"+name+"/"+m.Name] = true
		}
	}
	p.methods.Store(set)
}

// ServerMethod is rpc.method for a server call to fullMethod: the method
// without its leading slash when the server registers it, else
// OtherMethod.
func (p *Pipeline) ServerMethod(fullMethod string) string {
	if set := p.methods.Load(); set != nil && !set.methods[fullMethod] {
		return OtherMethod
	}
	return rpcName(fullMethod)
}

func (p *Pipeline) events() bool { return p.Recorder.callEvents() }

// records reports whether calls are measured (metrics, spans or events):
// a pipeline that only passes W3C context on reads no clock.
func (p *Pipeline) records() bool { return p.Hub != nil || p.Tracing != nil || p.events() }

// now is the start of a call, zero when nothing is measured.
func (p *Pipeline) now() time.Time {
	if p.records() {
		return time.Now()
	}
	return time.Time{}
}

var rpcSystem = attribute.String("rpc.system.name", "grpc")

// rpcName is a full gRPC method as rpc.method and span names spell it.
func rpcName(fullMethod string) string {
	if len(fullMethod) > 0 && fullMethod[0] == '/' {
		return fullMethod[1:]
	}
	return fullMethod
}

// ServerInterceptors record every call a server handles: put them first
// in the chain so refused calls count too. Calls to methods the server
// does not register reach interceptors only through an unknown service
// handler (mesh.NewServer installs one); they are
// labelled OtherMethod once SetMethods is called, so rpc.method stays
// bounded.
func (p *Pipeline) ServerInterceptors() (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := p.now()
		method := p.ServerMethod(info.FullMethod)
		ctx, span := p.serverStart(ctx, method)
		resp, err := handler(ctx, req)
		p.serverEnd(ctx, span, method, info.FullMethod, start, err)
		return resp, err
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := p.now()
		method := p.ServerMethod(info.FullMethod)
		ctx, span := p.serverStart(ss.Context(), method)
		if ctx != ss.Context() {
			ss = &ctxStream{ServerStream: ss, ctx: ctx}
		}
		err := handler(srv, ss)
		p.serverEnd(ctx, span, method, info.FullMethod, start, err)
		return err
	}
	return unary, stream
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *ctxStream) Context() context.Context { return s.ctx }

// first is the first value of key in the incoming metadata.
// metadata.FromIncomingContext would copy the whole map on every call;
// this copies only a value that is there.
func first(ctx context.Context, key string) string {
	if v := metadata.ValueFromIncomingContext(ctx, key); len(v) > 0 {
		return v[0]
	}
	return ""
}

// serverStart starts a server call; method is its rpc.method label.
func (p *Pipeline) serverStart(ctx context.Context, method string) (context.Context, trace.Span) {
	in := Incoming{Traceparent: first(ctx, "traceparent"), Tracestate: first(ctx, "tracestate"), Baggage: first(ctx, "baggage")}
	if in == (Incoming{}) && p.Tracing == nil {
		return ctx, nil
	}
	// The span's attributes are set when it ends, all in one call
	// (endSpan).
	return p.Tracing.ServerStart(ctx, in, method, trace.SpanKindServer, nil)
}

// serverEnd records a server call: method is its rpc.method label,
// fullMethod the method called (for the admin event).
func (p *Pipeline) serverEnd(ctx context.Context, span trace.Span, method, fullMethod string, start time.Time, err error) {
	if start.IsZero() {
		return
	}
	d := time.Since(start)
	code := status.Code(err)
	if span == nil && p.Hub == nil && !p.events() {
		return
	}
	pr, _ := peer.FromContext(ctx)
	src := p.peerID(pr)
	var sc trace.SpanContext
	if span != nil {
		sc = span.SpanContext()
		endSpan(span, code, err, rpcSystem, attribute.String("rpc.method", method), KeySource.String(src), KeyDestination.String(p.Self))
	}
	if p.Hub != nil {
		p.Hub.RPCServer.Series(Key{Method: method, Status: CodeName(code), Source: src, Destination: p.Self}).Observe(d, sc)
	}
	if p.events() {
		p.Recorder.RecordCall(Event{Time: start, Side: "server", Source: src, Peer: p.Self, Method: fullMethod,
			Code: code.String(), Duration: d, Detail: errDetail(err)})
	}
}

// endSpan ends a gRPC span with its status and the attributes extra, set
// in one call: the SDK grows a span's attributes at each call.
func endSpan(span trace.Span, code grpccodes.Code, err error, extra ...attribute.KeyValue) {
	kvs := make([]attribute.KeyValue, 0, len(extra)+1)
	kvs = append(kvs, extra...)
	span.SetAttributes(append(kvs, attribute.String("rpc.response.status_code", CodeName(code)))...)
	if err != nil {
		span.SetStatus(codes.Error, errDetail(err))
	}
	span.End()
}

// callState follows the attempts of a traced call.
type callState struct {
	attempts atomic.Int32
	inflight atomic.Int32
}

type callStateKey struct{}

// next numbers an attempt of the call and says whether it is the first, a
// retry (no other attempt in flight) or a hedge. Call done when it ends.
func (cs *callState) next() (n int, kind string) {
	a := cs.attempts.Add(1)
	kind = "first"
	if a > 1 {
		kind = "retry"
		if cs.inflight.Load() > 0 {
			kind = "hedge"
		}
	}
	cs.inflight.Add(1)
	return int(a), kind
}

func (cs *callState) done() { cs.inflight.Add(-1) }

// ClientInterceptors record every call made on a connection to target,
// the whole call (retries included) as one: put them first in the chain.
// AttemptInterceptors, put after the resilience interceptors, count each
// attempt and give a traced call's attempts their spans.
func (p *Pipeline) ClientInterceptors(target string) (grpc.UnaryClientInterceptor, grpc.StreamClientInterceptor) {
	unary := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		start := p.now()
		var pr *peer.Peer
		if p.Hub != nil || p.Tracing != nil || p.events() {
			pr, opts = withPeer(opts)
		}
		ctx, span := p.clientStart(ctx, method, target, opts, false)
		err := invoker(ctx, method, req, reply, cc, opts...)
		if !start.IsZero() {
			p.clientEnd(span, target, method, opts, start, pr, err)
		}
		return err
	}
	stream := func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		if !p.records() {
			return streamer(p.outgoing(ctx), desc, cc, method, opts...)
		}
		start := time.Now()
		pr, opts := withPeer(opts)
		ctx, span := p.clientStart(ctx, method, target, opts, true)
		cs, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil {
			p.clientEnd(span, target, method, opts, start, pr, err)
			return nil, err
		}
		return &recordedStream{ClientStream: cs, done: func(err error) {
			p.clientEnd(span, target, method, opts, start, pr, err)
		}}, nil
	}
	return unary, stream
}

// callPeer is the peer a call reports its connection in, with room for
// the call's options and the option that asks for it: one allocation for
// both.
type callPeer struct {
	peer peer.Peer
	opts [4]grpc.CallOption
}

// withPeer returns opts with a grpc.Peer option added and the peer it
// fills in. The caller's slice is not written to, and the one returned is
// full, so that interceptors further in (hedged attempts among them)
// append to copies of their own.
func withPeer(opts []grpc.CallOption) (*peer.Peer, []grpc.CallOption) {
	cp := new(callPeer)
	if len(opts) < len(cp.opts) {
		all := append(append(cp.opts[:0], opts...), grpc.Peer(&cp.peer))
		return &cp.peer, all[:len(all):len(all)]
	}
	all := make([]grpc.CallOption, 0, len(opts)+1)
	return &cp.peer, append(append(all, opts...), grpc.Peer(&cp.peer))
}

// methodLabel is rpc.method for a client call: the method when generated
// code names it (grpc.StaticMethod), else "_OTHER", as grpc-go's own
// metrics do, so a caller inventing method names cannot grow the series.
func methodLabel(method string, opts []grpc.CallOption) string {
	for _, o := range opts {
		if _, ok := o.(grpc.StaticMethodCallOption); ok {
			return rpcName(method)
		}
	}
	return OtherMethod
}

func (p *Pipeline) clientStart(ctx context.Context, method, target string, opts []grpc.CallOption, stream bool) (context.Context, trace.Span) {
	var span trace.Span
	if sampled, c := p.Tracing.ClientDecision(ctx); sampled {
		// The span's attributes are set when it ends (clientEnd).
		ctx, span = p.Tracing.Start(c, methodLabel(method, opts), trace.SpanKindClient)
		if span != nil && !stream {
			// The attempts inject their own spans' context.
			ctx = context.WithValue(ctx, callStateKey{}, &callState{})
		}
	} else {
		ctx = c
	}
	if span != nil && !stream {
		return withBaggage(ctx), span
	}
	return p.outgoing(ctx), span
}

// outgoing adds to ctx's outgoing metadata the W3C context and baggage it
// carries.
func (p *Pipeline) outgoing(ctx context.Context) context.Context {
	if tp, ts, ok := Outgoing(ctx); ok {
		if ts != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", tp, "tracestate", ts)
		} else {
			ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", tp)
		}
	}
	return withBaggage(ctx)
}

func withBaggage(ctx context.Context) context.Context {
	if b := baggage.FromContext(ctx); b.Len() > 0 {
		return metadata.AppendToOutgoingContext(ctx, "baggage", b.String())
	}
	return ctx
}

func (p *Pipeline) clientEnd(span trace.Span, target, method string, opts []grpc.CallOption, start time.Time, pr *peer.Peer, err error) {
	d := time.Since(start)
	code := status.Code(err)
	var sc trace.SpanContext
	dest := p.peerID(pr)
	if span != nil {
		sc = span.SpanContext()
		label := methodLabel(method, opts)
		endSpan(span, code, err, rpcSystem, attribute.String("rpc.method", label), KeySource.String(p.Self), KeyTarget.String(target),
			KeyDestination.String(dest))
	}
	if p.Hub != nil {
		p.Hub.RPCClient.Series(Key{Method: methodLabel(method, opts), Status: CodeName(code), Source: p.Self, Destination: dest, Target: target}).Observe(d, sc)
	}
	if p.events() {
		e := Event{Time: start, Side: "client", Source: p.Self, Target: target, Method: method, Peer: dest,
			Code: code.String(), Duration: d, Detail: errDetail(err)}
		if pr != nil && pr.Addr != nil {
			e.Endpoint = pr.Addr.String()
		}
		p.Recorder.RecordCall(e)
	}
}

// AttemptInterceptors count each attempt of a call (mesh.rpc.client.attempts)
// and, for a traced unary call, give the attempt a span numbered in
// mesh.attempt whose context goes to the server.
func (p *Pipeline) AttemptInterceptors(target string) (grpc.UnaryClientInterceptor, grpc.StreamClientInterceptor) {
	unary := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		var (
			span trace.Span
			n    int
			kind string
		)
		if cs, _ := ctx.Value(callStateKey{}).(*callState); cs != nil {
			n, kind = cs.next()
			defer cs.done()
			// The span's attributes are set when it ends (attemptEnd).
			ctx, span = p.Tracing.Start(ctx, "attempt "+methodLabel(method, opts), trace.SpanKindInternal)
			sc := trace.SpanContextFromContext(ctx)
			kv := []string{"traceparent", FormatTraceparent(sc)}
			if ts := sc.TraceState().String(); ts != "" {
				kv = append(kv, "tracestate", ts)
			}
			ctx = metadata.AppendToOutgoingContext(ctx, kv...)
		}
		err := invoker(ctx, method, req, reply, cc, opts...)
		if span != nil || p.Hub != nil {
			p.attemptEnd(span, n, kind, target, method, opts, err)
		}
		return err
	}
	stream := func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		cs, err := streamer(ctx, desc, cc, method, opts...)
		if p.Hub != nil {
			p.attemptEnd(nil, 0, "", target, method, opts, err)
		}
		return cs, err
	}
	return unary, stream
}

// attemptEnd records an attempt; a traced one's span is attempt n of its
// call, of kind ("first", "retry" or "hedge").
func (p *Pipeline) attemptEnd(span trace.Span, n int, kind, target, method string, opts []grpc.CallOption, err error) {
	code := status.Code(err)
	var pr *peer.Peer
	for _, o := range opts {
		if po, ok := o.(grpc.PeerCallOption); ok {
			pr = po.PeerAddr
		}
	}
	dest := p.peerID(pr)
	if span != nil {
		attempt, attemptKind, destination := KeyAttempt.Int(n), KeyAttemptKind.String(kind), KeyDestination.String(dest)
		if pr != nil && pr.Addr != nil {
			endSpan(span, code, err, attempt, attemptKind, destination, attribute.String("server.address", pr.Addr.String()))
		} else {
			endSpan(span, code, err, attempt, attemptKind, destination)
		}
	}
	if p.Hub != nil {
		p.Hub.RPCAttempts.Series(Key{Method: methodLabel(method, opts), Status: CodeName(code), Source: p.Self, Destination: dest, Target: target}).Add()
	}
}

// peerID is the SPIFFE ID of pr's connection, interned when there is a Hub.
func (p *Pipeline) peerID(pr *peer.Peer) string {
	if p.Hub != nil {
		return p.Hub.PeerID(pr)
	}
	return PeerSPIFFEID(pr)
}

// PeerSPIFFEID returns the SPIFFE ID in the verified certificate of the
// connection p, or "".
func PeerSPIFFEID(p *peer.Peer) string {
	if p == nil {
		return ""
	}
	if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && info.SPIFFEID != nil {
		return info.SPIFFEID.String()
	}
	return ""
}

func errDetail(err error) string {
	if err == nil {
		return ""
	}
	if s, ok := status.FromError(err); ok {
		return s.Message()
	}
	return err.Error()
}

// recordedStream records its call once, when the stream ends.
type recordedStream struct {
	grpc.ClientStream
	once sync.Once
	done func(error)
}

func (s *recordedStream) finish(err error) {
	if errors.Is(err, io.EOF) {
		err = nil
	}
	s.once.Do(func() { s.done(err) })
}

func (s *recordedStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err != nil {
		s.finish(err)
	}
	return err
}

func (s *recordedStream) SendMsg(m any) error {
	err := s.ClientStream.SendMsg(m)
	if err != nil && !errors.Is(err, io.EOF) {
		s.finish(err)
	}
	return err
}
