package spire_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"

	"github.com/gridmesh/gridmesh/internal/testutil/spire"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

const unaryCall = "/grpc.testing.TestService/UnaryCall"

// workloadSource opens the mesh's Workload API source for the SVID with the
// given ID path from agent addr, and closes it in t.Cleanup.
func workloadSource(ctx context.Context, t testing.TB, d *spire.Deployment, addr, path string) *security.WorkloadAPISource {
	t.Helper()
	src, err := security.NewWorkloadAPISource(ctx, security.WorkloadAPIConfig{Address: addr, ExpectedID: d.ID(path)})
	if err != nil {
		t.Fatalf("NewWorkloadAPISource(%s): %v", path, err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

// echo answers UnaryCall with the caller's SPIFFE ID in Username, counts the
// calls that reach it, and records the client certificates it was reached with.
type echo struct {
	testgrpc.UnimplementedTestServiceServer
	calls atomic.Int64

	mu          sync.Mutex
	clientCerts map[string]bool // leaf serials
}

func (e *echo) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	e.calls.Add(1)
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 {
			e.mu.Lock()
			if e.clientCerts == nil {
				e.clientCerts = map[string]bool{}
			}
			e.clientCerts[info.State.PeerCertificates[0].SerialNumber.String()] = true
			e.mu.Unlock()
		}
	}
	caller, _ := mesh.PeerID(ctx)
	return &testpb.SimpleResponse{Username: caller.String(), Payload: req.GetPayload()}, nil
}

func (e *echo) distinctClientCerts() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.clientCerts)
}

// startMeshServer serves an echo on a loopback port with the mesh until the
// test ends, and returns its address.
func startMeshServer(t testing.TB, svc *echo, opts ...mesh.ServerOption) string {
	t.Helper()
	srv, err := mesh.NewServer(opts...)
	if err != nil {
		t.Fatalf("mesh.NewServer: %v", err)
	}
	testgrpc.RegisterTestServiceServer(srv, svc)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		srv.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return lis.Addr().String()
}

// dialMesh dials addr through the mesh and closes the connection in t.Cleanup.
func dialMesh(t testing.TB, addr string, opts ...mesh.DialOption) testgrpc.TestServiceClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, err := mesh.Dial(ctx, addr, opts...)
	if err != nil {
		t.Fatalf("mesh.Dial(%s): %v", addr, err)
	}
	t.Cleanup(func() { cc.Close() })
	return testgrpc.NewTestServiceClient(cc)
}

// freshCall dials a new connection (a new TLS handshake with the sources'
// current SVIDs and bundles), makes one call as caller and closes it. p, when
// not nil, receives the server's peer information.
func freshCall(ctx context.Context, addr string, caller spiffeid.ID, p *peer.Peer, opts ...mesh.DialOption) error {
	cc, err := mesh.Dial(ctx, addr, opts...)
	if err != nil {
		return err
	}
	defer cc.Close()
	return checkCall(ctx, testgrpc.NewTestServiceClient(cc), caller, p)
}

// serverLeaf returns the server certificate a call's peer presented.
func serverLeaf(p *peer.Peer) *x509.Certificate {
	if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 {
		return info.State.PeerCertificates[0]
	}
	return nil
}

// checkCall makes one UnaryCall and checks the handler saw caller.
func checkCall(ctx context.Context, c testgrpc.TestServiceClient, caller spiffeid.ID, p *peer.Peer) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	opts := []grpc.CallOption{}
	if p != nil {
		opts = append(opts, grpc.Peer(p))
	}
	resp, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}, opts...)
	if err != nil {
		return err
	}
	if resp.GetUsername() != caller.String() {
		return fmt.Errorf("handler saw caller %q, want %s", resp.GetUsername(), caller)
	}
	return nil
}

// load makes calls at a steady pace from a few workers until stopped, and
// counts them. A call cut short by stop is not counted.
type load struct {
	calls  atomic.Int64
	failed atomic.Int64
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu          sync.Mutex
	errs        []string
	serverCerts map[string]bool // leaf serials the clients saw
}

// startLoad runs workers goroutines, each calling call every interval.
func startLoad(t testing.TB, workers int, every time.Duration, call func(ctx context.Context, p *peer.Peer) error) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel, serverCerts: map[string]bool{}}
	for range workers {
		l.wg.Go(func() {
			tick := time.NewTicker(every)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				var p peer.Peer
				err := call(ctx, &p)
				if ctx.Err() != nil {
					return
				}
				l.calls.Add(1)
				l.mu.Lock()
				if err != nil {
					l.failed.Add(1)
					if len(l.errs) < 10 {
						l.errs = append(l.errs, time.Now().UTC().Format("15:04:05.000")+" "+err.Error())
					}
				} else if leaf := serverLeaf(&p); leaf != nil {
					l.serverCerts[leaf.SerialNumber.String()] = true
				}
				l.mu.Unlock()
			}
		})
	}
	t.Cleanup(l.stop)
	return l
}

// stop ends the load and waits for the workers. Safe to call twice.
func (l *load) stop() {
	l.cancel()
	l.wg.Wait()
}

// report logs the figures and fails t on any failed call.
// distinctServerCerts returns how many server certificates the calls saw.
func (l *load) distinctServerCerts() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.serverCerts)
}

func (l *load) report(t testing.TB, name string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	t.Logf("%s: %d calls, %d failed, %d distinct server certificates seen", name, l.calls.Load(), l.failed.Load(), len(l.serverCerts))
	if l.calls.Load() == 0 {
		t.Errorf("%s: no calls made", name)
	}
	if n := l.failed.Load(); n > 0 {
		t.Errorf("%s: %d of %d calls failed; first errors:\n%s", name, n, l.calls.Load(), joinLines(l.errs))
	}
}

func joinLines(lines []string) string {
	out := ""
	for _, l := range lines {
		out += "  " + l + "\n"
	}
	return out
}

// rotationWatch records every change of a source's SVID (by leaf serial).
type rotationWatch struct {
	name   string
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	last  string
	times []time.Time // one per rotation seen
}

// watchRotations polls src every 100ms until the test ends.
func watchRotations(t testing.TB, name string, src security.Source) *rotationWatch {
	ctx, cancel := context.WithCancel(context.Background())
	r := &rotationWatch{name: name, cancel: cancel}
	if svid, err := src.GetX509SVID(); err == nil {
		r.last = svid.Certificates[0].SerialNumber.String()
	}
	r.wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			svid, err := src.GetX509SVID()
			if err != nil {
				continue
			}
			serial := svid.Certificates[0].SerialNumber.String()
			r.mu.Lock()
			if serial != r.last {
				r.last = serial
				r.times = append(r.times, time.Now())
			}
			r.mu.Unlock()
		}
	})
	t.Cleanup(func() {
		cancel()
		r.wg.Wait()
	})
	return r
}

// count returns the rotations seen so far.
func (r *rotationWatch) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.times)
}

// since returns the rotations seen after t0.
func (r *rotationWatch) since(t0 time.Time) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, at := range r.times {
		if at.After(t0) {
			n++
		}
	}
	return n
}
