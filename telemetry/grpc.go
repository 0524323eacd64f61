package telemetry

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// ServerHandler returns the otelgrpc stats handler for a server: a span per
// call continuing the caller's W3C trace context and baggage, and the
// semantic-convention RPC metrics. Nil providers mean the globals. Each
// span also gets the caller's SPIFFE ID (mesh.peer.spiffe_id) and, with
// WithSelf, the server's own (mesh.spiffe_id).
//
// Merely installing a stats handler makes grpc-go build per-call stats
// events (header copies and the like), whatever the handler does with
// them: install it only when Enabled, as the mesh does.
func ServerHandler(tp trace.TracerProvider, mp metric.MeterProvider, opts ...HandlerOption) stats.Handler {
	return withIdentities(otelgrpc.NewServerHandler(handlerOptions(tp, mp)...), opts)
}

// ClientHandler returns the otelgrpc stats handler for a client: a span per
// call whose context and baggage travel to the server in W3C headers, with
// the SPIFFE ID the server presented (mesh.peer.spiffe_id) and, with
// WithSelf, the caller's own (mesh.spiffe_id). Nil providers mean the
// globals.
func ClientHandler(tp trace.TracerProvider, mp metric.MeterProvider, opts ...HandlerOption) stats.Handler {
	return withIdentities(otelgrpc.NewClientHandler(handlerOptions(tp, mp)...), opts)
}

// Span attribute keys for identities.
const (
	KeySpanSelf = attribute.Key("mesh.spiffe_id")      // this side's SPIFFE ID
	KeySpanPeer = attribute.Key("mesh.peer.spiffe_id") // the other side's, from its verified certificate
)

// HandlerOption configures ServerHandler and ClientHandler.
type HandlerOption interface{ apply(*handlerConfig) }

type handlerConfig struct{ self string }

type handlerOptionFunc func(*handlerConfig)

func (f handlerOptionFunc) apply(c *handlerConfig) { f(c) }

// WithSelf names this side's SPIFFE ID, recorded on every span.
func WithSelf(id string) HandlerOption {
	return handlerOptionFunc(func(c *handlerConfig) { c.self = id })
}

func withIdentities(h stats.Handler, opts []HandlerOption) stats.Handler {
	var cfg handlerConfig
	for _, o := range opts {
		o.apply(&cfg)
	}
	return &identityHandler{Handler: h, self: cfg.self}
}

// identityHandler adds the SPIFFE IDs of both sides to the span once the
// connection is known: at the client's outgoing header, at the server's
// incoming header.
type identityHandler struct {
	stats.Handler
	self string
}

func (h *identityHandler) HandleRPC(ctx context.Context, s stats.RPCStats) {
	switch s := s.(type) {
	case *stats.OutHeader:
		if s.IsClient() {
			h.annotate(ctx)
		}
	case *stats.InHeader:
		if !s.IsClient() {
			h.annotate(ctx)
		}
	}
	h.Handler.HandleRPC(ctx, s)
}

func (h *identityHandler) annotate(ctx context.Context) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	p, _ := peer.FromContext(ctx)
	id := PeerSPIFFEID(p)
	switch {
	case id != "" && h.self != "":
		span.SetAttributes(KeySpanPeer.String(id), KeySpanSelf.String(h.self))
	case id != "":
		span.SetAttributes(KeySpanPeer.String(id))
	case h.self != "":
		span.SetAttributes(KeySpanSelf.String(h.self))
	}
}

func handlerOptions(tp trace.TracerProvider, mp metric.MeterProvider) []otelgrpc.Option {
	opts := []otelgrpc.Option{otelgrpc.WithPropagators(Propagator())}
	if tp != nil {
		opts = append(opts, otelgrpc.WithTracerProvider(tp))
	}
	if mp != nil {
		opts = append(opts, otelgrpc.WithMeterProvider(mp))
	}
	return opts
}

// The globals as the otel package starts them: delegating no-ops.
var (
	initialTracerProvider = otel.GetTracerProvider()
	initialMeterProvider  = otel.GetMeterProvider()
)

// Enabled reports whether anything recorded through tp or mp can reach an
// exporter: false while both are no-ops (the OpenTelemetry globals before
// anyone installs SDK providers, or the providers of the noop packages).
// Nil means the current global. The mesh checks it when it builds a server
// or client and installs no telemetry at all when false: set up telemetry
// (Setup, or otel.SetTracerProvider/SetMeterProvider) before building them.
func Enabled(tp trace.TracerProvider, mp metric.MeterProvider) bool {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	return !noopTracer(tp) || !noopMeter(mp)
}

// TracingEnabled reports Enabled for traces alone.
func TracingEnabled(tp trace.TracerProvider) bool {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	return !noopTracer(tp)
}

// MetricsEnabled reports Enabled for metrics alone.
func MetricsEnabled(mp metric.MeterProvider) bool {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	return !noopMeter(mp)
}

func noopTracer(tp trace.TracerProvider) bool {
	switch tp.(type) {
	case tracenoop.TracerProvider, *tracenoop.TracerProvider:
		return true
	}
	return tp == initialTracerProvider // a pointer: == cannot panic
}

func noopMeter(mp metric.MeterProvider) bool {
	switch mp.(type) {
	case metricnoop.MeterProvider, *metricnoop.MeterProvider:
		return true
	}
	return mp == initialMeterProvider
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

// ServerInterceptors record every call a server handles in m
// (mesh.rpc.requests, mesh.rpc.duration, and a "call" event), labelled with
// the caller's SPIFFE ID and self, the server's own. Put them first in the
// chain so refused calls are counted too. With no SDK provider and no
// event sink they add only a check per call.
func ServerInterceptors(m *Metrics, self string) (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	record := func(ctx context.Context, method string, start time.Time, err error) {
		p, _ := peer.FromContext(ctx)
		m.RecordCall(Event{
			Time: start, Side: "server", Source: PeerSPIFFEID(p), Peer: self, Method: method,
			Code: status.Code(err).String(), Duration: time.Since(start), Detail: errDetail(err),
		})
	}
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !m.active() {
			return handler(ctx, req)
		}
		start := time.Now()
		resp, err := handler(ctx, req)
		record(ctx, info.FullMethod, start, err)
		return resp, err
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if !m.active() {
			return handler(srv, ss)
		}
		start := time.Now()
		err := handler(srv, ss)
		record(ss.Context(), info.FullMethod, start, err)
		return err
	}
	return unary, stream
}

// ClientInterceptors record every call made on a connection to target in m,
// labelled with self (the caller's SPIFFE ID) and the SPIFFE ID the server
// presented. Put them first in the chain so the whole call, retries
// included, is one record.
func ClientInterceptors(m *Metrics, self, target string) (grpc.UnaryClientInterceptor, grpc.StreamClientInterceptor) {
	unary := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if !m.active() {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		start := time.Now()
		var p peer.Peer
		err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Peer(&p))...)
		m.RecordCall(clientEvent(self, target, method, start, &p, err))
		return err
	}
	stream := func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		if !m.active() {
			return streamer(ctx, desc, cc, method, opts...)
		}
		start := time.Now()
		p := new(peer.Peer)
		cs, err := streamer(ctx, desc, cc, method, append(opts, grpc.Peer(p))...)
		if err != nil {
			m.RecordCall(clientEvent(self, target, method, start, p, err))
			return nil, err
		}
		return &recordedStream{ClientStream: cs, done: func(err error) {
			m.RecordCall(clientEvent(self, target, method, start, p, err))
		}}, nil
	}
	return unary, stream
}

func clientEvent(self, target, method string, start time.Time, p *peer.Peer, err error) Event {
	e := Event{
		Time: start, Side: "client", Source: self, Target: target, Method: method, Peer: PeerSPIFFEID(p),
		Code: status.Code(err).String(), Duration: time.Since(start), Detail: errDetail(err),
	}
	if p.Addr != nil {
		e.Endpoint = p.Addr.String()
	}
	return e
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
