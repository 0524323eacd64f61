package main

import (
	"context"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/gridmesh/gridmesh/controlplane/registration"
	"github.com/gridmesh/gridmesh/internal/meshtls"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

// TestServeRefusesMissingOrWrongSVIDSource: meshd does not start without
// its own SVID, and says which flag to fix and how.
func TestServeRefusesMissingOrWrongSVIDSource(t *testing.T) {
	t.Setenv("SPIFFE_ENDPOINT_SOCKET", "")
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.pem")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no source", nil, "no SVID source for meshd: pass -spiffe-socket"},
		{"incomplete files", []string{"-svid-cert", "c.pem", "-svid-key", "k.pem"}, "-svid-bundle not set; give -svid-cert, -svid-key and -svid-bundle together"},
		{"socket and files", []string{"-spiffe-socket", "unix:///tmp/x.sock", "-svid-cert", "c", "-svid-key", "k", "-svid-bundle", "b"}, "-spiffe-socket and -svid-cert/-svid-key/-svid-bundle both name meshd's SVID source"},
		{"plaintext with an identity", []string{"-insecure-plaintext-xds-for-local-debugging", "-operator-id", "spiffe://rec.example/ops"}, "-insecure-plaintext-xds-for-local-debugging serves without any identity"},
		{"operator not a SPIFFE ID", []string{"-spiffe-socket", "unix:///tmp/x.sock", "-operator-id", "ops"}, `-operator-id "ops" is not a SPIFFE ID`},
		{"spiffe-id without a socket", []string{"-svid-cert", "c", "-svid-key", "k", "-svid-bundle", "b", "-spiffe-id", "spiffe://rec.example/meshd"}, "-spiffe-id picks an SVID from the Workload API"},
		{"files that are not there", []string{"-svid-cert", missing, "-svid-key", missing, "-svid-bundle", missing, "-identity-wait", "200ms", "-listen", "127.0.0.1:0"}, "-svid-cert " + missing},
		{"no agent at the socket", []string{"-spiffe-socket", "unix://" + filepath.Join(dir, "agent.sock"), "-identity-wait", "200ms", "-listen", "127.0.0.1:0"}, "-spiffe-socket: meshd's SVID:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := runServe(ctx, tt.args)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("runServe(%q): %v\nwant an error containing %q", tt.args, err, tt.want)
			}
		})
	}
}

// writeSVIDFiles writes src's SVID, key and bundle as PEM files for
// -svid-cert, -svid-key and -svid-bundle.
func writeSVIDFiles(t *testing.T, src *security.DevSource, td spiffeid.TrustDomain) (cert, key, bundle string) {
	t.Helper()
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	b, err := src.GetX509BundleForTrustDomain(td)
	if err != nil {
		t.Fatal(err)
	}
	var bundlePEM []byte
	for _, c := range b.X509Authorities() {
		bundlePEM = append(bundlePEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	dir := t.TempDir()
	cert, key, bundle = filepath.Join(dir, "svid.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "bundle.pem")
	for path, data := range map[string][]byte{cert: certPEM, key: keyPEM, bundle: bundlePEM} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return cert, key, bundle
}

// TestServeOverMTLSWithSVIDFiles: meshd serve with its SVID from files
// serves a mesh server and client over mTLS end to end (the server
// registers itself, the client gets routes and calls it), and refuses a
// plaintext registration.
func TestServeOverMTLSWithSVIDFiles(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	td := spiffeid.RequireTrustDomainFromString("rec.example")
	ca, err := security.NewDevCA(td, security.DevCAConfig{SVIDTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	source := func(path string) *security.DevSource {
		src, err := ca.Source(spiffeid.RequireFromPath(td, path))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { src.Close() })
		return src
	}
	cert, key, bundle := writeSVIDFiles(t, source("/meshd"), td)
	f, err := parseServeFlags([]string{"-listen", "127.0.0.1:0", "-startup-grace", "0",
		"-svid-cert", cert, "-svid-key", key, "-svid-bundle", bundle, "-operator-id", "spiffe://rec.example/ops"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	src, closer, err := f.id.open(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	ready := make(chan string, 1)
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- serve(sctx, f, slog.New(slog.NewTextHandler(io.Discard, nil)), src, func(x, _ string) { ready <- x })
	}()
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatalf("serve: %v", err)
	}
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("serve after cancel: %v", err)
		}
	}()

	srv, err := mesh.NewServer(mesh.WithIdentity(source("/trading")), mesh.WithControlPlane(addr), mesh.WithXDSService("trading", ""))
	if err != nil {
		t.Fatal(err)
	}
	testgrpc.RegisterTestServiceServer(srv, testgrpc.UnimplementedTestServiceServer{})
	lis := listenLoopback(t)
	srvCtx, srvStop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(srvCtx, lis) }()
	defer func() { srvStop(); srv.Close(); <-served }()

	cc, err := mesh.Dial(ctx, "xds:///trading", mesh.WithIdentity(source("/gateway")), mesh.WithControlPlane(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	// The server answers Unimplemented: the call went through meshd's
	// routes to the registered server over mTLS.
	cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
	defer ccancel()
	_, err = testgrpc.NewTestServiceClient(cc).EmptyCall(cctx, &testgrpc.Empty{}, grpc.WaitForReady(true))
	if err == nil || !strings.Contains(err.Error(), "Unimplemented") && !strings.Contains(err.Error(), "not implemented") {
		t.Fatalf("call through meshd serve over mTLS: %v, want the server's Unimplemented", err)
	}

	plain := registration.NewClient(addr)
	if err := plain.Register(ctx, registration.Registration{Service: "trading", Address: "127.0.0.1:9", SPIFFEID: "spiffe://rec.example/trading"}); err == nil {
		t.Error("meshd serve took a plaintext registration")
	}
	ops := registration.NewTLSClient(meshtls.ClientTLSConfig(source("/ops"), spiffeid.MatchID(spiffeid.RequireFromPath(td, "/meshd"))), addr)
	defer ops.Close()
	list, err := ops.List(ctx)
	if err != nil || len(list) != 1 || list[0].SPIFFEID != "spiffe://rec.example/trading" {
		t.Errorf("registrations as the operator sees them: %+v, %v; want trading's own", list, err)
	}
}

func listenLoopback(t *testing.T) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return lis
}
