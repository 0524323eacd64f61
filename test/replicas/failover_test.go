package replicas_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/gridmesh/gridmesh/internal/testutil/consul"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

type named struct {
	testgrpc.UnimplementedTestServiceServer
	name string
}

func (n named) UnaryCall(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{ServerId: n.name}, nil
}

func source(t *testing.T, ca *security.DevCA, path string) *security.DevSource {
	t.Helper()
	src, err := ca.Source(spiffeid.RequireFromPath(td, path))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

// startBackend serves TestService as an xDS mesh server of trading that
// names every replica, answering with name. It registers itself through
// the first replica that answers.
func startBackend(t *testing.T, ca *security.DevCA, name string, replicas ...string) string {
	t.Helper()
	srv, err := mesh.NewServer(mesh.WithIdentity(source(t, ca, "/trading")),
		mesh.WithControlPlane(replicas...), mesh.WithXDSService("trading", ""),
		mesh.WithDrainTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	testgrpc.RegisterTestServiceServer(srv, named{name: name})
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
		<-done
	})
	return lis.Addr().String()
}

// load runs calls on c from several goroutines until stopped, counting
// failures and which backend answered.
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	servedBy   map[string]int
	errs       []error
	stop       context.CancelFunc
	wg         sync.WaitGroup
}

func startLoad(ctx context.Context, c testgrpc.TestServiceClient, workers int) *load {
	l := &load{servedBy: map[string]int{}}
	ctx, l.stop = context.WithCancel(ctx)
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for ctx.Err() == nil {
				cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				resp, err := c.UnaryCall(cctx, &testpb.SimpleRequest{})
				cancel()
				if ctx.Err() != nil {
					return // stopped mid-call: not the mesh's failure
				}
				l.mu.Lock()
				if err != nil {
					l.failed.Add(1)
					if len(l.errs) < 5 {
						l.errs = append(l.errs, err)
					}
				} else {
					l.ok.Add(1)
					l.servedBy[resp.GetServerId()]++
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *load) served(name string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.servedBy[name]
}

// TestReplicaFailoverZeroFailedCalls runs two meshd processes over one
// Consul agent, serving xDS and the registration API over mTLS with the
// SVID spiffe://example.org/meshd (no plaintext). A mesh server and a
// client name both. The server's registration, taken by one replica, is
// listed by both, which serve the same snapshot version. With calls running, the replica the client's xDS
// stream is on is killed (SIGKILL): no call fails, the client's stream
// moves to the other replica, and a second server started after the kill
// (registering through the survivor) gets calls.
func TestReplicaFailoverZeroFailedCalls(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bin := buildMeshd(t)
	agent := consul.Start(t)
	cfg := filepath.Join(t.TempDir(), "meshd.yaml")
	if err := os.WriteFile(cfg, []byte("mtls: true\nservices:\n  - name: trading\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ca, err := security.NewDevCA(td, security.DevCAConfig{SVIDTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cp := newControlPlaneIdentity(t, ca, td)
	replicas := []*meshdProc{
		startMeshd(t, bin, "a", cp, "-consul", agent.Addr(), "-config", cfg),
		startMeshd(t, bin, "b", cp, "-consul", agent.Addr(), "-config", cfg),
	}
	addrs := []string{replicas[0].addr, replicas[1].addr}

	one := startBackend(t, ca, "one", addrs...)
	xdstest.WaitFor(ctx, t, "both replicas list the registration and serve one version", func() error {
		var versions []string
		for _, m := range replicas {
			list, err := m.list(ctx)
			if err != nil {
				return err
			}
			if len(list) != 1 || list[0].Address != one {
				return fmt.Errorf("meshd %s lists %+v, want trading at %s", m.name, list, one)
			}
			v, err := m.version(ctx)
			if err != nil {
				return err
			}
			versions = append(versions, v)
		}
		if versions[0] != versions[1] {
			return fmt.Errorf("replicas serve versions %s and %s", versions[0], versions[1])
		}
		return nil
	})

	cc, err := mesh.Dial(ctx, "xds:///trading", mesh.WithIdentity(source(t, ca, "/gateway")), mesh.WithControlPlane(addrs...))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := testgrpc.NewTestServiceClient(cc)
	if _, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("first call: %v", err)
	}
	l := startLoad(ctx, c, 4)
	defer func() { l.stop(); l.wg.Wait() }()

	// Find the replica the client's xDS stream is on, and kill it.
	var on, other *meshdProc
	xdstest.WaitFor(ctx, t, "the client's xDS stream is on one replica", func() error {
		var counts []int
		for _, m := range replicas {
			n, err := m.subscribers(ctx, "trading")
			if err != nil {
				return err
			}
			counts = append(counts, n)
		}
		switch {
		case counts[0] == 1 && counts[1] == 0:
			on, other = replicas[0], replicas[1]
		case counts[0] == 0 && counts[1] == 1:
			on, other = replicas[1], replicas[0]
		default:
			return fmt.Errorf("subscribers of trading: a %d, b %d", counts[0], counts[1])
		}
		return nil
	})
	xdstest.WaitFor(ctx, t, "calls before the kill", func() error {
		if l.ok.Load() < 100 {
			return errors.New("fewer than 100 calls done")
		}
		return nil
	})
	t.Logf("killing meshd %s, the client's; %d calls so far", on.name, l.ok.Load())
	on.kill(syscall.SIGKILL)

	xdstest.WaitFor(ctx, t, "the client's xDS stream moves to meshd "+other.name, func() error {
		n, err := other.subscribers(ctx, "trading")
		if err != nil {
			return err
		}
		if n != 1 {
			return fmt.Errorf("%d subscribers of trading on %s", n, other.name)
		}
		return nil
	})

	// An endpoint change after the kill reaches the client.
	startBackend(t, ca, "two", addrs...)
	xdstest.WaitFor(ctx, t, "calls reach the server started after the kill", func() error {
		if l.served("two") < 20 {
			return fmt.Errorf("%d calls served by two", l.served("two"))
		}
		return nil
	})
	l.stop()
	l.wg.Wait()
	if n := l.failed.Load(); n != 0 {
		t.Errorf("%d of %d calls failed across the kill; first errors: %v", n, n+l.ok.Load(), l.errs)
	}
	t.Logf("%d calls, none failed; served by one %d, two %d", l.ok.Load(), l.served("one"), l.served("two"))
}
