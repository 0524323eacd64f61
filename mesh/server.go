package mesh

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/internal/meshtls"
	"github.com/gridmesh/gridmesh/security"
)

// Server is a gRPC server inside the mesh: it accepts only mTLS connections
// from callers with a valid SVID, authorizes every call by the caller's
// SPIFFE ID, serves the standard gRPC health service (open to every
// authenticated caller unless WithHealthAuthorization), and drains
// gracefully.
// Register services on it as on a *grpc.Server. Safe for concurrent use.
type Server struct {
	grpc         grpcServer // *grpc.Server, or *xds.GRPCServer with WithControlPlane
	health       *health.Server
	id           spiffeid.ID
	drain        time.Duration
	logger       *slog.Logger
	registration discoveryServerConfig // WithRegistration (mesh/discovery.go)
	tel          *meshTelemetry        // mesh/telemetry.go
	// xds and releaseXDS are set by WithControlPlane (mesh/xds.go).
	xds        xdsConfig
	identity   security.Source // for the registration client's mTLS
	releaseXDS func()

	closeOnce sync.Once
}

// NewServer builds a mesh server. It does not block. The connection age is
// capped at 40% of the SVID's remaining validity when the server is built
// (about 40% of its TTL), with WithConnectionGrace for in-flight calls, so
// clients move to fresh certificates before the ones they connected with
// expire (workloads rotate at half-life); a connection is cut at the latest
// grace after its certificates expire. A call to a method the server does
// not register is authorized like any other before it is answered
// Unimplemented, so a refused caller cannot probe for methods (a
// grpc.UnknownServiceHandler in WithGRPCServerOptions replaces this).
func NewServer(opts ...ServerOption) (*Server, error) {
	cfg, id, remaining, logger, err := newServerConfig("NewServer", opts)
	if err != nil {
		return nil, err
	}
	authz := cfg.authorizer
	if authz == nil {
		authz = meshtls.AllowAll
	}
	tel, err := newTelemetry(&cfg.commonConfig, id)
	if err != nil {
		return nil, err
	}
	unary, stream := meshtls.Interceptors(tel.authorizer(cfg.healthAuthorizer(authz)), tel.onDeny(cfg.onDeny))
	creds := meshtls.ServerCredentials(cfg.identity, cfg.grace)
	var srv grpcServer // set below, before it serves
	grpcOpts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(unary),
		grpc.ChainUnaryInterceptor(cfg.unaryAfterAuthz()...),
		grpc.ChainStreamInterceptor(stream),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionAge:      remaining * 2 / 5,
			MaxConnectionAgeGrace: cfg.grace,
		}),
		// Before the caller's own options, which may replace it.
		grpc.UnknownServiceHandler(unknownMethod(&srv)),
	}
	grpcOpts = append(tel.serverOptions(), grpcOpts...) // telemetry interceptors outermost
	grpcOpts = append(grpcOpts, cfg.grpcOptions...)
	releaseXDS := func() {}
	if cfg.xds.controlPlane != "" {
		if srv, releaseXDS, err = cfg.newXDSServer(creds, grpcOpts, tel, id); err != nil {
			tel.close()
			return nil, err
		}
	} else {
		srv = grpc.NewServer(append(grpcOpts, grpc.Creds(creds))...)
	}
	tel.healthAuthorized = cfg.healthAuthorized
	tel.registerServer(cfg.identity, cfg.authorizer, "server")
	s := &Server{
		tel:          tel,
		grpc:         srv,
		releaseXDS:   releaseXDS,
		xds:          cfg.xds,
		identity:     cfg.identity,
		health:       health.NewServer(),
		id:           id,
		drain:        cfg.drain,
		registration: cfg.discovery,
		logger:       logger.With("component", "mesh.server", "spiffe_id", id.String()),
	}
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	cfg.registerReflection(s)
	return s, nil
}

// newServerConfig applies opts and reads what every mesh server needs of its
// identity: its SPIFFE ID and how long its current SVID stays valid.
func newServerConfig(constructor string, opts []ServerOption) (cfg serverConfig, id spiffeid.ID, remaining time.Duration, logger *slog.Logger, err error) {
	cfg = serverConfig{grace: 10 * time.Second, drain: 30 * time.Second}
	in := forNewServer
	if constructor == "NewHTTPServer" {
		in = forNewHTTPServer
	}
	if err := checkScope(in, opts); err != nil {
		return cfg, id, 0, nil, err
	}
	for _, o := range opts {
		o.applyServer(&cfg)
	}
	if err := cfg.xds.controlPlaneErr; err != nil {
		return cfg, id, 0, nil, err
	}
	if cfg.identity == nil {
		return cfg, id, 0, nil, fmt.Errorf("mesh: %s has no identity: pass mesh.WithIdentity(src), with src from security.NewWorkloadAPISource, security.NewFileSource or a security.DevCA", constructor)
	}
	if id, err = security.ID(cfg.identity); err != nil {
		return cfg, id, 0, nil, fmt.Errorf("mesh: %w", err)
	}
	if remaining, err = meshtls.SVIDRemaining(cfg.identity); err != nil {
		return cfg, id, 0, nil, fmt.Errorf("mesh: %w", err)
	}
	logger = cfg.logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return cfg, id, remaining, logger, nil
}

// RegisterService registers a service implementation, as on *grpc.Server.
// Call it before Serve.
func (s *Server) RegisterService(desc *grpc.ServiceDesc, impl any) {
	s.grpc.RegisterService(desc, impl)
}

// ID returns the server's own SPIFFE ID.
func (s *Server) ID() spiffeid.ID { return s.id }

// SetServingStatus sets the health status reported for service ("" is the
// whole server).
func (s *Server) SetServingStatus(service string, serving bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus(service, st)
}

// Serve accepts connections on lis until ctx ends, then drains: health turns
// NOT_SERVING, new calls are refused, in-flight calls get up to the drain
// timeout to finish, and Serve returns nil. It returns early with an error
// if lis fails. It blocks.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	s.tel.setMethods(s.grpc) // registration is over once serving starts
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.logger.Info("serving", "address", lis.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- s.grpc.Serve(lis) }()
	registration, err := s.registration.register(ctx, lis, s.id)
	if err != nil {
		s.grpc.Stop()
		<-errc
		return err
	}
	if registration != nil {
		defer registration.Close()
	}
	stopHeartbeat := s.heartbeat(ctx, lis.Addr().String())
	defer stopHeartbeat()
	select {
	case err := <-errc:
		if err != nil {
			return fmt.Errorf("mesh: serving on %s: %w", lis.Addr(), err)
		}
		return nil
	case <-ctx.Done():
	}
	s.logger.Info("draining", "timeout", s.drain)
	stopHeartbeat() // deregister from meshd first, so clients move away
	if registration != nil {
		drainCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := registration.Drain(drainCtx); err != nil {
			s.logger.Warn("marking the Consul registration failing", "error", err)
		}
		cancel()
	}
	s.health.Shutdown()
	stopped := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(stopped)
	}()
	timer := time.NewTimer(s.drain)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		s.logger.Warn("drain timeout: closing remaining connections")
		s.grpc.Stop()
		<-stopped
	}
	<-errc
	return nil
}

// Close stops the server at once, closing listeners and connections. It is
// safe to call more than once and together with Serve.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.health.Shutdown()
		s.grpc.Stop()
		s.tel.close()
		s.releaseXDS()
	})
	return nil
}

// PeerID returns the SPIFFE ID of the caller, from the verified client
// certificate of the connection a handler's ctx belongs to (gRPC or HTTP).
// The mesh records it before the handler runs, and nothing else can: a
// context the mesh's server did not hand out has no PeerID, whatever gRPC
// peer or values it carries. Headers and metadata in which a sidecar would
// name the caller (X-Forwarded-Client-Cert, X-SPIFFE-ID) come from the
// caller itself here, so the mesh removes them before the handler runs.
// See security.PeerID.
func PeerID(ctx context.Context) (spiffeid.ID, bool) { return security.PeerID(ctx) }

// unknownMethod answers calls to methods *srv does not register as grpc-go
// does without a handler (Unimplemented, "unknown service S" or "unknown
// method M for service S"), but as a call the server's interceptors see:
// such calls are authorized like any other, so a caller learns nothing of
// what the server offers before it is allowed to call, and with metrics on
// they are counted under one rpc.method.
func unknownMethod(srv *grpcServer) grpc.StreamHandler {
	return func(_ any, ss grpc.ServerStream) error {
		full, _ := grpc.MethodFromServerStream(ss)
		service, method := "", full
		if i := strings.LastIndexByte(full, '/'); i > 0 {
			service, method = full[1:i], full[i+1:]
		}
		if _, ok := (*srv).GetServiceInfo()[service]; ok {
			return status.Errorf(codes.Unimplemented, "unknown method %v for service %v", method, service)
		}
		return status.Errorf(codes.Unimplemented, "unknown service %v", service)
	}
}
