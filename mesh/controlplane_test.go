package mesh_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/internal/admin"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
	"github.com/gridmesh/gridmesh/internal/xdsstatus"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

// TestControlPlaneRotationUnderLoad: meshd's and the workloads' SVIDs
// live 4 seconds, so during the run meshd's xDS connections are recycled
// several times with new certificates on both sides, while calls run and
// a config change arrives every 200ms. Every call succeeds and every
// change reaches the client.
func TestControlPlaneRotationUnderLoad(t *testing.T) {
	ca := newDevCA(t, 4*time.Second)
	meshdSrc := devSource(t, ca, "/meshd")
	cfg := func(i int) *controlplane.Config {
		return &controlplane.Config{MTLS: true, Services: []controlplane.Service{{Name: "trading", Timeout: time.Duration(30+i) * time.Second}}}
	}
	meshd := xdstest.StartMeshd(t, "", cfg(0), controlplane.WithMTLS(controlplane.MTLSConfig{Source: meshdSrc, Grace: 500 * time.Millisecond}))

	startServer(t, &echoService{}, mesh.WithIdentity(devSource(t, ca, "/trading")), mesh.WithControlPlane(meshd.Addr),
		mesh.WithXDSService("trading", ""), mesh.WithConnectionGrace(500*time.Millisecond))

	adm := newAdmin(t)
	clientSrc := devSource(t, ca, "/gateway")
	cc, err := mesh.Dial(callTimeout(t), "xds:///trading", mesh.WithIdentity(clientSrc), mesh.WithControlPlane(meshd.Addr), mesh.WithAdmin(adm))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	client := testgrpc.NewTestServiceClient(cc)
	if _, err := client.UnaryCall(callTimeout(t), &testpb.SimpleRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("first call: %v", err)
	}

	// The route version the client holds, as its admin endpoint shows it.
	routeVersion := func() string {
		for _, u := range getJSON[admin.ConfigView](t, "http://"+adm.Addr()+"/config").Updates {
			if u.Resource == xdsstatus.RouteType && u.Name == "trading" && u.Status == "ACKED" {
				return u.Version
			}
		}
		return ""
	}

	streamsBefore := meshd.Stats().Streams
	serial := func(src *security.DevSource) string {
		svid, err := src.GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		return svid.Certificates[0].SerialNumber.String()
	}
	meshdSerial, clientSerial := serial(meshdSrc), serial(clientSrc)
	ctx, cancel := context.WithCancel(context.Background())
	var (
		calls, failed atomic.Int64
		firstErr      atomic.Value
		wg            sync.WaitGroup
	)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := client.UnaryCall(cctx, &testpb.SimpleRequest{})
				ccancel()
				calls.Add(1)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}
		}()
	}
	var delivered int
	deadline := time.Now().Add(9 * time.Second)
	for i := 1; time.Now().Before(deadline) || meshd.Stats().Streams-streamsBefore < 3; i++ {
		if i > 200 {
			t.Fatalf("after 200 config changes meshd saw only %d new xDS streams", meshd.Stats().Streams-streamsBefore)
		}
		if err := meshd.SetConfig("test", cfg(i)); err != nil {
			t.Fatal(err)
		}
		want := meshd.Snapshot().TypeVersions[xdsstatus.RouteType]
		changeDeadline := time.Now().Add(10 * time.Second)
		for routeVersion() != want {
			if time.Now().After(changeDeadline) {
				cancel()
				wg.Wait()
				t.Fatalf("config change %d (route version %s) did not reach the client within 10s; it holds %q", i, want, routeVersion())
			}
			time.Sleep(10 * time.Millisecond) // polling the admin endpoint, bounded by changeDeadline
		}
		delivered++
		time.Sleep(200 * time.Millisecond) // the pace of config changes, not a wait for state
	}
	cancel()
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of %d calls failed while the control channel rotated; first: %v", n, calls.Load(), firstErr.Load())
	}
	streams := meshd.Stats().Streams - streamsBefore
	if streams < 3 {
		t.Errorf("meshd saw %d new xDS streams, want at least 3 (connections recycled with new SVIDs)", streams)
	}
	if serial(meshdSrc) == meshdSerial || serial(clientSrc) == clientSerial {
		t.Error("meshd's or the client's SVID did not rotate during the run")
	}
	t.Logf("%d calls, %d config changes delivered, %d new xDS streams", calls.Load(), delivered, streams)
}

// TestControlPlanePlaintextRefusedByDefault: the mesh talks to meshd only
// over mTLS unless told otherwise, and a plaintext meshd gets no stream
// and no registration from it; the reverse holds too.
func TestControlPlanePlaintextRefusedByDefault(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	plain := xdstest.StartMeshd(t, "", &controlplane.Config{Services: []controlplane.Service{{Name: "trading"}}})
	secure := xdstest.StartMeshd(t, "", &controlplane.Config{Services: []controlplane.Service{{Name: "trading"}}},
		controlplane.WithMTLS(controlplane.MTLSConfig{Source: devSource(t, ca, "/meshd")}))
	tests := []struct {
		name  string
		meshd *xdstest.Meshd
		opts  []mesh.Option
	}{
		{"mesh default against a plaintext meshd", plain, nil},
		{"mesh plaintext against an mTLS meshd", secure, []mesh.Option{mesh.WithInsecurePlaintextControlPlaneForLocalDebugging()}},
		{"mesh expecting another meshd ID", secure, []mesh.Option{mesh.WithControlPlaneID(spiffeid.RequireFromPath(td, "/other-meshd"))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var dopts []mesh.DialOption
			sopts := []mesh.ServerOption{mesh.WithIdentity(devSource(t, ca, "/trading")), mesh.WithControlPlane(tt.meshd.Addr), mesh.WithXDSService("trading", "")}
			for _, o := range tt.opts {
				dopts = append(dopts, o)
				sopts = append(sopts, o)
			}
			startServer(t, &echoService{}, sopts...)

			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			cc, err := mesh.Dial(ctx, "xds:///trading", append([]mesh.DialOption{mesh.WithIdentity(devSource(t, ca, "/gateway")), mesh.WithControlPlane(tt.meshd.Addr)}, dopts...)...)
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			if _, err := testgrpc.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.WaitForReady(true)); err == nil {
				t.Fatal("a call went through a control plane the mesh should not have talked to")
			}
			st := tt.meshd.Stats()
			if st.Registered != 0 || st.Pushes != 0 {
				t.Errorf("meshd: %d registered, %d pushes; want none", st.Registered, st.Pushes)
			}
		})
	}
}

// TestWithControlPlaneIDAcceptsAnotherMeshdID: a meshd whose SVID is not
// spiffe://<td>/meshd serves a mesh told its ID.
func TestWithControlPlaneIDAcceptsAnotherMeshdID(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	meshd := xdstest.StartMeshd(t, "", &controlplane.Config{MTLS: true, Services: []controlplane.Service{{Name: "trading"}}},
		controlplane.WithMTLS(controlplane.MTLSConfig{Source: devSource(t, ca, "/cp/meshd-eu")}))
	cpID := mesh.WithControlPlaneID(id("/cp/meshd-eu"))
	startServer(t, &echoService{}, mesh.WithIdentity(devSource(t, ca, "/trading")), mesh.WithControlPlane(meshd.Addr), cpID, mesh.WithXDSService("trading", ""))
	cc, err := mesh.Dial(callTimeout(t), "xds:///trading", mesh.WithIdentity(devSource(t, ca, "/gateway")), mesh.WithControlPlane(meshd.Addr), cpID)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := testgrpc.NewTestServiceClient(cc).UnaryCall(callTimeout(t), &testpb.SimpleRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("call through a meshd with its ID given: %v", err)
	}
	if got := fmt.Sprint(meshd.Stats().Registered); got != "1" {
		t.Errorf("%s endpoints registered, want 1", got)
	}
}
