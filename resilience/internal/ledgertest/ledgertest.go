// Package ledgertest is a fake ledger service on loopback gRPC that fails
// on command, for the resilience tests. Its proto descriptor declares
// idempotency levels (Apply: none, Get: NO_SIDE_EFFECTS, Put: IDEMPOTENT)
// and is registered in protoregistry.GlobalFiles, as generated code would.
package ledgertest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The service and its methods.
const (
	Service = "gridmesh.test.ledger.v1.Ledger"
	Apply   = "/" + Service + "/Apply" // a write: no idempotency_level
	Get     = "/" + Service + "/Get"   // NO_SIDE_EFFECTS
	Put     = "/" + Service + "/Put"   // IDEMPOTENT
	Watch   = "/" + Service + "/Watch" // server streaming, NO_SIDE_EFFECTS: three messages
)

// WatchDesc describes Watch for ClientConn.NewStream.
var WatchDesc = &grpc.StreamDesc{StreamName: "Watch", ServerStreams: true}

// SlowFirstPrefix makes Get hold the first attempt for a value until it is
// canceled; later attempts for that value answer at once.
const SlowFirstPrefix = "slow-first:"

func init() {
	m := func(name string, lvl *descriptorpb.MethodOptions_IdempotencyLevel) *descriptorpb.MethodDescriptorProto {
		md := &descriptorpb.MethodDescriptorProto{
			Name:       proto.String(name),
			InputType:  proto.String(".google.protobuf.StringValue"),
			OutputType: proto.String(".google.protobuf.StringValue"),
		}
		if lvl != nil {
			md.Options = &descriptorpb.MethodOptions{IdempotencyLevel: lvl}
		}
		return md
	}
	fdp := &descriptorpb.FileDescriptorProto{
		Name:       proto.String("gridmesh/test/ledger/v1/ledger.proto"),
		Package:    proto.String("gridmesh.test.ledger.v1"),
		Dependency: []string{"google/protobuf/wrappers.proto"},
		Syntax:     proto.String("proto3"),
		Service: []*descriptorpb.ServiceDescriptorProto{{
			Name: proto.String("Ledger"),
			Method: []*descriptorpb.MethodDescriptorProto{
				m("Apply", nil),
				m("Get", descriptorpb.MethodOptions_NO_SIDE_EFFECTS.Enum()),
				m("Put", descriptorpb.MethodOptions_IDEMPOTENT.Enum()),
				func() *descriptorpb.MethodDescriptorProto {
					md := m("Watch", descriptorpb.MethodOptions_NO_SIDE_EFFECTS.Enum())
					md.ServerStreaming = proto.Bool(true)
					return md
				}(),
			},
		}},
	}
	_ = wrapperspb.String("") // registers google/protobuf/wrappers.proto
	fd, err := protodesc.NewFile(fdp, protoregistry.GlobalFiles)
	if err != nil {
		panic(err)
	}
	if err := protoregistry.GlobalFiles.RegisterFile(fd); err != nil {
		panic(err)
	}
}

// Mode is how the server behaves.
type Mode int32

const (
	// Healthy serves every call.
	Healthy Mode = iota
	// Unavailable fails every call with UNAVAILABLE before doing anything.
	Unavailable
	// DropAfterCommit applies Apply and then drops the connection, so the
	// client never gets the response.
	DropAfterCommit
	// Block holds Apply and Put (after counting the attempt, before applying)
	// until Unblock or the call's end.
	Block
)

// Server is a ledger on a loopback port. Safe for concurrent use.
type Server struct {
	// Addr is the server's host:port on 127.0.0.1.
	Addr string

	srv      *grpc.Server
	lis      *trackingListener
	mode     atomic.Int32
	attempts sync.Map // method -> *atomic.Int64
	applied  atomic.Int64
	canceled atomic.Int64
	deadline atomic.Int64 // remaining time Put saw at entry, ns; -1 none
	unblock  chan struct{}

	mu      sync.Mutex
	byKey   map[string]int
	seenGet map[string]bool
	script  []codes.Code
}

// Start starts a server on 127.0.0.1 with opts (interceptors) and stops it
// in t.Cleanup.
func Start(t testing.TB, opts ...grpc.ServerOption) *Server {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("ledgertest: listen: %v", err)
	}
	s := &Server{
		Addr:    l.Addr().String(),
		lis:     &trackingListener{Listener: l, conns: map[string]net.Conn{}},
		unblock: make(chan struct{}),
		byKey:   map[string]int{},
		seenGet: map[string]bool{},
	}
	s.srv = grpc.NewServer(opts...)
	s.srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: Service,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{
			{MethodName: "Apply", Handler: unary(Apply, s.apply)},
			{MethodName: "Get", Handler: unary(Get, s.get)},
			{MethodName: "Put", Handler: unary(Put, s.put)},
		},
		Streams: []grpc.StreamDesc{{StreamName: "Watch", ServerStreams: true, Handler: s.watch}},
	}, s)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.srv.Serve(s.lis)
	}()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
	return s
}

// Stop stops the server: later dials are refused. Safe to call twice.
func (s *Server) Stop() { s.srv.Stop() }

// SetMode changes how the server behaves from the next call on.
func (s *Server) SetMode(m Mode) { s.mode.Store(int32(m)) }

// SetScript makes the next len(cs) attempts of Get answer cs in order,
// one code each (codes.OK serves the read), before Mode applies again.
func (s *Server) SetScript(cs ...codes.Code) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.script = append(s.script[:0], cs...)
}

// scripted pops the next scripted code, if any.
func (s *Server) scripted() (codes.Code, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.script) == 0 {
		return codes.OK, false
	}
	c := s.script[0]
	s.script = s.script[1:]
	return c, true
}

// Unblock releases the calls held by Block, and every later one.
func (s *Server) Unblock() {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.unblock:
	default:
		close(s.unblock)
	}
}

// Attempts returns how many attempts of method reached the handler.
func (s *Server) Attempts(method string) int64 {
	if v, ok := s.attempts.Load(method); ok {
		return v.(*atomic.Int64).Load()
	}
	return 0
}

// Applied returns how many times Apply changed the ledger.
func (s *Server) Applied() int64 { return s.applied.Load() }

// AppliedTwice returns the request values Apply applied more than once.
func (s *Server) AppliedTwice() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for k, n := range s.byKey {
		if n > 1 {
			out = append(out, k)
		}
	}
	return out
}

// AppliedCount returns how many times Apply applied value.
func (s *Server) AppliedCount(value string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byKey[value]
}

// PutDeadline returns the time left until the deadline that the last Put
// saw on arrival, and whether it had one.
func (s *Server) PutDeadline() (time.Duration, bool) {
	d := s.deadline.Load()
	return time.Duration(d), d >= 0
}

// Canceled returns how many Get attempts ended because they were canceled.
func (s *Server) Canceled() int64 { return s.canceled.Load() }

func (s *Server) count(method string) {
	v, _ := s.attempts.LoadOrStore(method, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

func (s *Server) apply(ctx context.Context, req *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	s.count(Apply)
	switch Mode(s.mode.Load()) {
	case Unavailable:
		return nil, status.Error(codes.Unavailable, "ledgertest: unavailable on command")
	case Block:
		select {
		case <-s.unblock:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	s.applied.Add(1)
	s.mu.Lock()
	s.byKey[req.GetValue()]++
	s.mu.Unlock()
	if Mode(s.mode.Load()) == DropAfterCommit {
		if p, ok := peer.FromContext(ctx); ok {
			s.lis.drop(p.Addr.String())
		}
	}
	return wrapperspb.String("applied " + req.GetValue()), nil
}

func (s *Server) get(ctx context.Context, req *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	s.count(Get)
	if c, ok := s.scripted(); ok {
		if c != codes.OK {
			return nil, status.Errorf(c, "ledgertest: %v on script", c)
		}
		return wrapperspb.String("got " + req.GetValue()), nil
	}
	if Mode(s.mode.Load()) == Unavailable {
		return nil, status.Error(codes.Unavailable, "ledgertest: unavailable on command")
	}
	if v := req.GetValue(); strings.HasPrefix(v, SlowFirstPrefix) {
		s.mu.Lock()
		first := !s.seenGet[v]
		s.seenGet[v] = true
		s.mu.Unlock()
		if first {
			<-ctx.Done()
			s.canceled.Add(1)
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	return wrapperspb.String("got " + req.GetValue()), nil
}

func (s *Server) put(ctx context.Context, req *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	s.count(Put)
	s.deadline.Store(-1)
	if dl, ok := ctx.Deadline(); ok {
		s.deadline.Store(int64(time.Until(dl)))
	}
	switch Mode(s.mode.Load()) {
	case Unavailable:
		return nil, status.Error(codes.Unavailable, "ledgertest: unavailable on command")
	case Block:
		select {
		case <-s.unblock:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	return wrapperspb.String("put " + req.GetValue()), nil
}

func (s *Server) watch(_ any, ss grpc.ServerStream) error {
	s.count(Watch)
	if Mode(s.mode.Load()) == Unavailable {
		return status.Error(codes.Unavailable, "ledgertest: unavailable on command")
	}
	req := new(wrapperspb.StringValue)
	if err := ss.RecvMsg(req); err != nil {
		return err
	}
	for i := range 3 {
		if err := ss.SendMsg(wrapperspb.String(fmt.Sprintf("%s %d", req.GetValue(), i))); err != nil {
			return err
		}
	}
	return nil
}

func unary(method string, h func(context.Context, *wrapperspb.StringValue) (*wrapperspb.StringValue, error)) func(any, context.Context, func(any) error, grpc.UnaryServerInterceptor) (any, error) {
	return func(_ any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
		req := new(wrapperspb.StringValue)
		if err := dec(req); err != nil {
			return nil, err
		}
		if icpt == nil {
			return h(ctx, req)
		}
		return icpt(ctx, req, &grpc.UnaryServerInfo{FullMethod: method}, func(ctx context.Context, r any) (any, error) {
			return h(ctx, r.(*wrapperspb.StringValue))
		})
	}
}

// Call invokes method with value on conn and returns the response value.
func Call(ctx context.Context, conn grpc.ClientConnInterface, method, value string, opts ...grpc.CallOption) (string, error) {
	out := new(wrapperspb.StringValue)
	if err := conn.Invoke(ctx, method, wrapperspb.String(value), out, opts...); err != nil {
		return "", err
	}
	return out.GetValue(), nil
}

// trackingListener remembers accepted connections by remote address so
// that a handler can drop its own connection.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns map[string]net.Conn
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.conns[c.RemoteAddr().String()] = c
	l.mu.Unlock()
	return c, nil
}

func (l *trackingListener) drop(remote string) {
	l.mu.Lock()
	c, ok := l.conns[remote]
	delete(l.conns, remote)
	l.mu.Unlock()
	if ok {
		_ = c.Close()
	}
}

// String describes the server for test logs.
func (s *Server) String() string { return fmt.Sprintf("ledger@%s", s.Addr) }
