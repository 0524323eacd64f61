package mesh

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/reflection"
)

// WithReflection serves gRPC server reflection (grpc.reflection.v1 and
// v1alpha), so tools such as grpcurl can list the server's services and
// describe their methods. Off by default: reflection tells a caller every
// service and message the server has.
//
// Reflection calls are authorized like any other method: a caller needs a
// rule for "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
// (and the v1alpha name for older tools), else it gets PERMISSION_DENIED.
// NewHTTPServer refuses this option.
func WithReflection() ServerOption {
	return serverOnly("WithReflection", forNewServer, func(c *serverConfig) { c.reflection = true })
}

// GetServiceInfo returns the services registered on the server, with their
// methods, as grpc.Server's does; grpc-go's reflection service reads it.
func (s *Server) GetServiceInfo() map[string]grpc.ServiceInfo {
	return s.grpc.GetServiceInfo()
}

// registerReflection adds the reflection services to s when the option
// asked for them.
func (c *serverConfig) registerReflection(s *Server) {
	if c.reflection {
		reflection.Register(s)
	}
}
