// Package xdstest runs meshd and xDS-configured gRPC backends and clients
// on loopback for tests: a real controlplane.Server serving ADS, grpc-go's
// real xDS server (xds.NewGRPCServer) and xds:/// channels, all with the
// bootstrap built in process.
package xdstest

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/xds"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/controlplane/registration"
	"github.com/gridmesh/gridmesh/internal/xdsbootstrap"
	"github.com/gridmesh/gridmesh/internal/xdscert"
)

// Meshd is a controlplane.Server serving xDS and its HTTP API on loopback.
type Meshd struct {
	*controlplane.Server
	// Addr is the xDS address; HTTPAddr the registration API's.
	Addr, HTTPAddr string
	// ClientTLS, when set, is the TLS config Register and Client use (an
	// mTLS meshd); nil: plaintext.
	ClientTLS *tls.Config

	lis  net.Listener
	done chan struct{}
	once sync.Once
}

// StartMeshd starts a meshd with cfg (nil: empty config) on 127.0.0.1
// ports, or on addr when addr is not "" (to restart on the same port).
// It is stopped at cleanup. It serves plaintext
// (controlplane.WithInsecurePlaintextForLocalDebugging) unless opts hold
// controlplane.WithMTLS; clients then need Bootstrap's InsecurePlaintext
// or mesh.WithInsecurePlaintextControlPlaneForLocalDebugging.
func StartMeshd(t testing.TB, addr string, cfg *controlplane.Config, opts ...controlplane.Option) *Meshd {
	t.Helper()
	return StartMeshdOn(t, addr, "", cfg, opts...)
}

// StartMeshdOn is StartMeshd with the HTTP API's address too ("" for any
// port), to restart a meshd where its clients and servers expect it.
func StartMeshdOn(t testing.TB, addr, httpAddr string, cfg *controlplane.Config, opts ...controlplane.Option) *Meshd {
	t.Helper()
	lis := listen(t, addr)
	hlis := listen(t, httpAddr)
	s := controlplane.NewServer(append([]controlplane.Option{controlplane.WithInsecurePlaintextForLocalDebugging()}, opts...)...)
	if cfg != nil {
		if err := s.SetConfig("test", cfg); err != nil {
			t.Fatalf("meshd config: %v", err)
		}
	}
	m := &Meshd{Server: s, Addr: lis.Addr().String(), HTTPAddr: hlis.Addr().String(), lis: lis, done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = s.Serve(lis) }()
	go func() { defer wg.Done(); _ = s.ServeHTTP(hlis) }()
	go func() { wg.Wait(); close(m.done) }()
	t.Cleanup(m.Stop)
	return m
}

// listen listens on addr (default 127.0.0.1:0), retrying for a while: a
// restarted meshd may find its port still held for a moment.
func listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		lis, err := net.Listen("tcp", addr)
		if err == nil {
			return lis
		}
		if time.Now().After(deadline) {
			t.Fatalf("listen on %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond) // polling for the port, bounded by the deadline
	}
}

// Stop kills the meshd: every xDS stream ends at once. Safe to call twice.
func (m *Meshd) Stop() {
	m.once.Do(func() {
		_ = m.Server.Close()
		<-m.done
	})
}

// Bootstrap returns a bootstrap config pointing at m, with src (may be nil)
// as the mTLS identity.
func (m *Meshd) Bootstrap(t testing.TB, src xdscert.Source) xdsbootstrap.Config {
	return Bootstrap(t, m.Addr, src)
}

// Bootstrap returns a bootstrap config for the plaintext control plane at
// addr, with src (may be nil) registered as the mTLS identity of the data
// plane until cleanup.
func Bootstrap(t testing.TB, addr string, src xdscert.Source) xdsbootstrap.Config {
	c := xdsbootstrap.Config{ServerURI: addr, InsecurePlaintext: true}
	if src != nil {
		cp, release := xdscert.Register(src)
		t.Cleanup(release)
		c.CertProvider = cp
	}
	return c
}

// Backend is an xDS-configured TestService server. UnaryCall answers with
// ServerId set to Name, after Behavior (if set) has its say.
type Backend struct {
	Name string
	Addr string
	// Hits counts UnaryCall and EmptyCall invocations that reached the
	// handler.
	Hits atomic.Int64
	// Behavior, when set, runs first in every UnaryCall; a non-nil error
	// is returned to the caller.
	Behavior atomic.Pointer[func(ctx context.Context) error]

	srv *xds.GRPCServer
}

// SetBehavior sets what every UnaryCall does first.
func (b *Backend) SetBehavior(f func(ctx context.Context) error) { b.Behavior.Store(&f) }

type testService struct {
	testgrpc.UnimplementedTestServiceServer
	b *Backend
}

func (s testService) EmptyCall(context.Context, *testgrpc.Empty) (*testgrpc.Empty, error) {
	s.b.Hits.Add(1)
	return &testgrpc.Empty{}, nil
}

func (s testService) UnaryCall(ctx context.Context, _ *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	s.b.Hits.Add(1)
	if f := s.b.Behavior.Load(); f != nil {
		if err := (*f)(ctx); err != nil {
			return nil, err
		}
	}
	return &testgrpc.SimpleResponse{ServerId: s.b.Name}, nil
}

// BackendOptions says how to start and register a backend.
type BackendOptions struct {
	// Name is returned in ServerId. Required.
	Name string
	// Service and Version are registered with meshd.
	Service, Version string
	// Identity is the backend's SVID source (nil: no mTLS identity), and
	// SPIFFEID the ID registered for it.
	Identity xdscert.Source
	SPIFFEID string
	// CertProvider, when set, replaces Identity: the bootstrap names it
	// (xdscert.WorkloadAPI, say).
	CertProvider *xdsbootstrap.CertProvider
	// Addr is where to listen; default 127.0.0.1:0.
	Addr string
	// NoRegister skips registration; the test registers the backend.
	NoRegister bool
	// ControlTLS, when set, is the client TLS config of the backend's xDS
	// channel to an mTLS meshd; nil: plaintext.
	ControlTLS *tls.Config
}

// StartBackend starts an xds.GRPCServer on loopback, registers it with m
// through the registration API and waits until it is serving.
func StartBackend(t testing.TB, m *Meshd, o BackendOptions) *Backend {
	t.Helper()
	addr := o.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen for backend %s: %v", o.Name, err)
	}
	b := &Backend{Name: o.Name, Addr: lis.Addr().String()}
	if !o.NoRegister {
		Register(t, m, registration.Registration{Service: o.Service, Version: o.Version, Address: b.Addr, SPIFFEID: o.SPIFFEID})
	}
	bc := m.Bootstrap(t, o.Identity)
	bc.ServerIdentity = o.SPIFFEID // meshd names the backend's listener with it
	if o.CertProvider != nil {
		bc.CertProvider = o.CertProvider
	}
	if o.ControlTLS != nil {
		cc, release := xdsbootstrap.RegisterChannelCreds(credentials.NewTLS(o.ControlTLS))
		t.Cleanup(release)
		bc.ChannelCreds, bc.InsecurePlaintext = cc, false
	}
	sopts, err := xdsbootstrap.ServerOptions(bc, nil)
	if err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	serving := make(chan struct{})
	var once sync.Once
	srv, err := xds.NewGRPCServer(append(sopts, xds.ServingModeCallback(func(_ net.Addr, a xds.ServingModeChangeArgs) {
		if a.Mode == connectivity.ServingModeServing {
			once.Do(func() { close(serving) })
		}
	}))...)
	if err != nil {
		t.Fatalf("xds server: %v", err)
	}
	b.srv = srv
	testgrpc.RegisterTestServiceServer(srv, testService{b: b})
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	if !o.NoRegister {
		select {
		case <-serving:
		case <-time.After(20 * time.Second):
			t.Fatalf("backend %s at %s never got its listener from meshd", o.Name, b.Addr)
		}
	}
	return b
}

// Stop stops the backend.
func (b *Backend) Stop() { b.srv.Stop() }

// Register registers r with m through the HTTP registration API.
func Register(t testing.TB, m *Meshd, r registration.Registration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.Client(t).Register(ctx, r); err != nil {
		t.Fatalf("register %+v: %v", r, err)
	}
}

// Client returns a registration client for m, over TLS with m.ClientTLS
// when set; closed at cleanup.
func (m *Meshd) Client(t testing.TB) *registration.Client {
	if m.ClientTLS == nil {
		return registration.NewClient(m.HTTPAddr)
	}
	c := registration.NewTLSClient(m.ClientTLS, m.HTTPAddr)
	t.Cleanup(func() { c.Close() })
	return c
}

// Dial returns a TestService client for xds:///service through meshd at
// addr, with src (may be nil) as the mTLS identity. Closed at cleanup.
func Dial(t testing.TB, addr, service string, src xdscert.Source) testgrpc.TestServiceClient {
	t.Helper()
	dopts, err := xdsbootstrap.DialOptions(Bootstrap(t, addr, src), nil)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///"+service, dopts...)
	if err != nil {
		t.Fatalf("dial xds:///%s: %v", service, err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return testgrpc.NewTestServiceClient(cc)
}

// WaitFor polls cond every 20ms until it returns nil or ctx ends, and fails
// the test with cond's last error.
func WaitFor(ctx context.Context, t testing.TB, what string, cond func() error) {
	t.Helper()
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %v (gave up: %v)", what, err, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ErrNotYet is a generic "condition not reached" for WaitFor.
var ErrNotYet = errors.New("not yet")
