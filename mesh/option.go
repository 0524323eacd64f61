package mesh

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/gridmesh/gridmesh/resilience/idempotency"
	"github.com/gridmesh/gridmesh/security"
)

// ServerOption configures NewServer.
type ServerOption interface{ applyServer(*serverConfig) }

// DialOption configures Dial.
type DialOption interface{ applyDial(*dialConfig) }

// Option configures both servers and clients.
type Option interface {
	ServerOption
	DialOption
}

type commonConfig struct {
	identity  security.Source
	logger    *slog.Logger
	telemetry telemetryConfig // mesh/telemetry.go
}

type serverConfig struct {
	commonConfig
	authorizer  security.Authorizer
	onDeny      func(*security.DeniedError)
	grace       time.Duration
	drain       time.Duration
	grpcOptions []grpc.ServerOption
	http        httpServerConfig      // mesh/httpoption.go
	discovery   discoveryServerConfig // mesh/discovery.go
	idempotency idempotency.Store     // mesh/resilience.go
	xds         xdsConfig             // mesh/xds.go

	healthAuthorized bool // mesh/healthoption.go
	reflection       bool // mesh/reflection.go
}

type dialConfig struct {
	commonConfig
	serverID    spiffeid.ID
	serverTD    spiffeid.TrustDomain
	grpcOptions []grpc.DialOption
	http        httpDialConfig       // mesh/httpoption.go
	discovery   discoveryDialConfig  // mesh/discovery.go
	resilience  resilienceDialConfig // mesh/resilience.go
	xds         xdsConfig            // mesh/xds.go
}

type bothOption func(*commonConfig)

func (o bothOption) applyServer(c *serverConfig) { o(&c.commonConfig) }
func (o bothOption) applyDial(c *dialConfig)     { o(&c.commonConfig) }

type serverOption func(*serverConfig)

func (o serverOption) applyServer(c *serverConfig) { o(c) }

type dialOption func(*dialConfig)

func (o dialOption) applyDial(c *dialConfig) { o(c) }

// constructor is a set of the mesh's constructors, the ones an option
// applies to.
type constructor uint8

const (
	forNewServer constructor = 1 << iota
	forNewHTTPServer
	forDial
	forHTTPClient // HTTPClient and NewHTTPTransport
)

var constructorNames = []string{"NewServer", "NewHTTPServer", "Dial", "HTTPClient"}

func (c constructor) String() string {
	var names []string
	for i, n := range constructorNames {
		if c&(1<<i) != 0 {
			names = append(names, n)
		}
	}
	return strings.Join(names, " and ")
}

// scoped is an option that applies to some constructors only. Every
// constructor refuses, by name, a scoped option it is not in the scope of,
// so a misplaced option is an error and never silently does nothing.
type scoped struct {
	name   string
	scope  constructor
	server func(*serverConfig)
	dial   func(*dialConfig)
}

func (o scoped) applyServer(c *serverConfig) { o.server(c) }
func (o scoped) applyDial(c *dialConfig)     { o.dial(c) }

// scopedServer and scopedDial are scoped options of one side only, so that
// passing them to the other side's constructors does not compile.
type scopedServer struct{ o scoped }

func (o scopedServer) applyServer(c *serverConfig) { o.o.server(c) }

type scopedDial struct{ o scoped }

func (o scopedDial) applyDial(c *dialConfig) { o.o.dial(c) }

func serverOnly(name string, scope constructor, fn func(*serverConfig)) ServerOption {
	return scopedServer{scoped{name: name, scope: scope, server: fn}}
}

func dialOnly(name string, scope constructor, fn func(*dialConfig)) DialOption {
	return scopedDial{scoped{name: name, scope: scope, dial: fn}}
}

// checkScope refuses the first option in opts that does not apply to the
// constructor in.
func checkScope[O any](in constructor, opts []O) error {
	for _, o := range opts {
		var s scoped
		switch o := any(o).(type) {
		case scoped:
			s = o
		case scopedServer:
			s = o.o
		case scopedDial:
			s = o.o
		default:
			continue
		}
		if s.scope&in == 0 {
			return fmt.Errorf("mesh: %s does not apply to %s: it configures %s only; remove it, or pass it to %s", s.name, in, s.scope, s.scope)
		}
	}
	return nil
}

// WithIdentity sets where the service's X.509-SVID and trust bundles come
// from: a SPIRE agent (security.NewWorkloadAPISource), files
// (security.NewFileSource) or a development CA (security.DevCA.Source).
// Required. The mesh does not close the source.
func WithIdentity(src security.Source) Option {
	return bothOption(func(c *commonConfig) { c.identity = src })
}

// WithLogger sets the logger for mesh events. Default: silent.
func WithLogger(l *slog.Logger) Option {
	return bothOption(func(c *commonConfig) { c.logger = l })
}

// WithAuthorizer sets the server's call authorization, for example
// security.Rules(...). A denied call never reaches its handler. Default:
// every caller that presents a valid SVID of a trusted trust domain is
// allowed. The gRPC health service's Check and Watch are open to every
// authenticated caller whatever the authorizer says, so registries and
// load balancers can probe; WithHealthAuthorization puts them under it.
func WithAuthorizer(a security.Authorizer) ServerOption {
	return serverOption(func(c *serverConfig) { c.authorizer = a })
}

// WithDenialHook calls fn for every call the authorizer refuses, after the
// refusal. fn must be quick and safe for concurrent use.
func WithDenialHook(fn func(*security.DeniedError)) ServerOption {
	return serverOption(func(c *serverConfig) { c.onDeny = fn })
}

// WithConnectionGrace sets how long in-flight calls may run on a connection
// after it reaches its maximum age, and how long past the expiry of its
// certificates a connection may live at most. Default 10s.
func WithConnectionGrace(d time.Duration) ServerOption {
	return serverOption(func(c *serverConfig) { c.grace = d })
}

// WithDrainTimeout sets how long Serve waits for in-flight calls after its
// context ends before it closes the remaining connections. Default 30s.
func WithDrainTimeout(d time.Duration) ServerOption {
	return serverOption(func(c *serverConfig) { c.drain = d })
}

// WithGRPCServerOptions adds options to the underlying *grpc.Server. The
// mesh's own credentials and interceptors are always applied; interceptors
// given here run after the mesh's authorization.
func WithGRPCServerOptions(opts ...grpc.ServerOption) ServerOption {
	return serverOnly("WithGRPCServerOptions", forNewServer, func(c *serverConfig) { c.grpcOptions = append(c.grpcOptions, opts...) })
}

// WithServerID makes Dial accept only a server presenting exactly id (unless
// the resolver names a per-endpoint ID, which then wins).
func WithServerID(id spiffeid.ID) DialOption {
	return dialOption(func(c *dialConfig) { c.serverID = id })
}

// WithServerTrustDomain makes Dial accept any server in trust domain td.
// Without this option or WithServerID, the server must be in the client's
// own trust domain.
func WithServerTrustDomain(td spiffeid.TrustDomain) DialOption {
	return dialOption(func(c *dialConfig) { c.serverTD = td })
}

// WithGRPCDialOptions adds options to the underlying grpc.NewClient call.
// The mesh's transport credentials always apply.
func WithGRPCDialOptions(opts ...grpc.DialOption) DialOption {
	return dialOnly("WithGRPCDialOptions", forDial, func(c *dialConfig) { c.grpcOptions = append(c.grpcOptions, opts...) })
}
