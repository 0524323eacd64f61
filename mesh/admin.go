package mesh

import (
	"fmt"
	"log/slog"
	"sync"

	"github.com/gridmesh/gridmesh/internal/admin"
)

// WithAdmin turns on the process's admin endpoint at addr, a loopback
// host:port such as "127.0.0.1:15000" (any other host is refused with an
// error from NewServer or Dial). Off by default.
//
// The endpoint is per process: every server and client given the same addr
// shows on one endpoint, started by the first and stopped when the last is
// closed (Server.Close; ClientConn.Close). It serves JSON (GET /status,
// /identity, /targets, /config, /denials, /events) and, over gRPC on the
// same port, grpc-go's channelz and CSDS covering the xDS client of every
// channel and server in xDS mode; `meshctl` and grpcdebug read it.
// WithoutTelemetry turns it off.
func WithAdmin(addr string) Option {
	return bothOption(func(c *commonConfig) { c.telemetry.adminAddr = addr })
}

// AdminAddr returns the address the server's admin endpoint listens on, or
// "" without WithAdmin. Useful with port 0.
func (s *Server) AdminAddr() string {
	if s.tel == nil || s.tel.admin == nil {
		return ""
	}
	return s.tel.admin.Addr()
}

// admins are the process's admin endpoints by requested address.
var admins = struct {
	sync.Mutex
	m map[string]*adminRef
}{m: map[string]*adminRef{}}

type adminRef struct {
	srv  *admin.Server
	refs int
}

// acquireAdmin returns the endpoint for addr, starting it if needed, and a
// func that drops the reference, stopping the endpoint with the last one.
func acquireAdmin(addr string, logger *slog.Logger) (*admin.Server, func(), error) {
	admins.Lock()
	defer admins.Unlock()
	ref := admins.m[addr]
	if ref == nil {
		if logger != nil {
			logger = logger.With("component", "mesh.admin")
		}
		srv, err := admin.Listen(admin.Config{Addr: addr, Logger: logger})
		if err != nil {
			return nil, nil, fmt.Errorf("mesh: WithAdmin: %w", err)
		}
		ref = &adminRef{srv: srv}
		admins.m[addr] = ref
	}
	ref.refs++
	var once sync.Once
	release := func() {
		once.Do(func() {
			admins.Lock()
			defer admins.Unlock()
			ref.refs--
			if ref.refs == 0 {
				// Closed under the lock, so a new endpoint for addr
				// cannot race the old one for the port.
				delete(admins.m, addr)
				ref.srv.Close()
			}
		})
	}
	return ref.srv, release, nil
}
