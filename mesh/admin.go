package mesh

import (
	"fmt"
	"log/slog"
	"sync"

	"github.com/gridmesh/gridmesh/internal/admin"
	"github.com/gridmesh/gridmesh/internal/meshtel"
)

// Admin is a local admin endpoint: it shows the servers and clients built
// with WithAdmin(a) while they are open, and serves JSON (GET /status,
// /identity, /targets, /config, /denials, /events) and, over gRPC on the
// same port, grpc-go's channelz and CSDS covering the xDS client of every
// channel and server in xDS mode; `meshctl` and grpcdebug read it. The
// Admin is its owner: nothing is shared with other Admins in the process.
// Safe for concurrent use.
type Admin struct {
	srv *admin.Server
	// rotations watches the SVID rotations of components shown here that
	// have no metrics provider of their own to count them.
	rotations meshtel.Rotations
	closeOnce sync.Once
}

// NewAdmin starts an admin endpoint listening on addr, a loopback
// host:port such as "127.0.0.1:15000" (port 0 picks one: see Addr); any
// other host is refused. logger, when not nil, gets the endpoint's errors.
// It does not block. Close it when the servers and clients given it are
// closed.
func NewAdmin(addr string, logger *slog.Logger) (*Admin, error) {
	if logger != nil {
		logger = logger.With("component", "mesh.admin")
	}
	srv, err := admin.Listen(admin.Config{Addr: addr, Logger: logger})
	if err != nil {
		return nil, fmt.Errorf("mesh: NewAdmin: %w", err)
	}
	return &Admin{srv: srv}, nil
}

// Addr returns the address the endpoint listens on.
func (a *Admin) Addr() string { return a.srv.Addr() }

// Close stops the endpoint and waits for its goroutines. Servers and
// clients given it keep working and stop showing anywhere. Safe to call
// more than once.
func (a *Admin) Close() error {
	a.closeOnce.Do(func() { a.srv.Close() })
	return nil
}

// WithAdmin shows the server or client on a, an endpoint from NewAdmin,
// until it is closed (Server.Close, HTTPServer.Close, ClientConn.Close,
// HTTPTransport.Close). Several servers and clients can share one Admin.
// Off by default; WithoutTelemetry turns it off. A nil a makes the
// constructor fail.
func WithAdmin(a *Admin) Option {
	return bothOption(func(c *commonConfig) { c.telemetry.admin, c.telemetry.adminSet = a, true })
}
