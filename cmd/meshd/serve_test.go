package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
)

// kubeDefaults are the Kubernetes flags' defaults.
var kubeDefaults = kubeFlags{versionLabel: "version", syncTimeout: time.Minute}

func TestParseServeFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    *serveFlags
		wantErr string
	}{
		{"defaults", []string{"-spiffe-socket", "unix:///run/spire/agent.sock"}, &serveFlags{listen: "127.0.0.1:15010", grace: 10 * time.Second, watch: time.Second, logLevel: "info", kube: kubeDefaults,
			id: identityFlags{socket: "unix:///run/spire/agent.sock", wait: 30 * time.Second}}, ""},
		{"all", []string{"-config", "m.yaml", "-listen", ":1", "-registration", ":2", "-consul", "127.0.0.1:8500", "-startup-grace", "5s",
			"-svid-cert", "c.pem", "-svid-key", "k.pem", "-svid-bundle", "b.pem", "-operator-id", "spiffe://rec.example/ops,spiffe://rec.example/ci", "-operator-id", "spiffe://rec.example/admin", "-identity-wait", "5s"},
			&serveFlags{config: "m.yaml", listen: ":1", registration: ":2", consul: "127.0.0.1:8500", grace: 5 * time.Second, watch: time.Second, logLevel: "info", kube: kubeDefaults,
				id: identityFlags{certFile: "c.pem", keyFile: "k.pem", bundleFile: "b.pem", operators: []string{"spiffe://rec.example/ops", "spiffe://rec.example/ci", "spiffe://rec.example/admin"}, wait: 5 * time.Second}}, ""},
		{"plaintext", []string{"-insecure-plaintext-xds-for-local-debugging"}, &serveFlags{listen: "127.0.0.1:15010", grace: 10 * time.Second, watch: time.Second, logLevel: "info", kube: kubeDefaults,
			id: identityFlags{plaintext: true, wait: 30 * time.Second}}, ""},
		{"kubernetes", []string{"-spiffe-socket", "unix:///run/spire/agent.sock", "-kubernetes", "-kubeconfig", "kc", "-trust-domain", "example.org", "-kubernetes-namespaces", "shop,bank", "-kubernetes-version-label", "app.kubernetes.io/version"},
			&serveFlags{listen: "127.0.0.1:15010", grace: 10 * time.Second, watch: time.Second, logLevel: "info",
				kube: kubeFlags{enabled: true, kubeconfig: "kc", trustDomain: "example.org", namespaces: "shop,bank", versionLabel: "app.kubernetes.io/version", syncTimeout: time.Minute},
				id:   identityFlags{socket: "unix:///run/spire/agent.sock", wait: 30 * time.Second}}, ""},
		{"kubernetes without trust domain", []string{"-kubernetes"}, nil, "-kubernetes needs -trust-domain"},
		{"kubernetes flags without -kubernetes", []string{"-kubeconfig", "kc", "-trust-domain", "example.org"}, nil, "-kubeconfig, -trust-domain only apply with -kubernetes"},
		{"bad listen", []string{"-listen", "15010"}, nil, `-listen "15010" is not host:port`},
		{"stray argument", []string{"extra"}, nil, "meshd serve takes no arguments"},
	}
	t.Setenv("SPIFFE_ENDPOINT_SOCKET", "")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseServeFlags(tt.args, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(serveFlags{}, kubeFlags{}, identityFlags{})); diff != "" {
				t.Errorf("flags (-want +got):\n%s", diff)
			}
		})
	}
}

func TestServeRefusesBadConfigAtStart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "meshd.yaml")
	if err := os.WriteFile(path, []byte("services:\n  - name: trading\n    lb: fastest\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := runServe(ctx, []string{"-config", path, "-listen", "127.0.0.1:0", "-registration", "127.0.0.1:0", "-insecure-plaintext-xds-for-local-debugging"})
	want := "controlplane: " + path + ` refused: line 3: services[0].lb: "fastest" is not a load-balancing policy; use round_robin, least_request or ring_hash`
	if err == nil || err.Error() != want {
		t.Errorf("runServe: %v\nwant: %s", err, want)
	}
}

func TestServeRoutesRegisteredBackend(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "meshd.yaml")
	if err := os.WriteFile(path, []byte("services:\n  - name: trading\n    timeout: 5s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// No -registration: servers register on the xDS port.
	f, err := parseServeFlags([]string{"-config", path, "-listen", "127.0.0.1:0", "-startup-grace", "0", "-insecure-plaintext-xds-for-local-debugging"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan [2]string, 1)
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- serve(sctx, f, slog.New(slog.NewTextHandler(io.Discard, nil)), nil, func(x, h string) { ready <- [2]string{x, h} })
	}()
	var addrs [2]string
	select {
	case addrs = <-ready:
	case err := <-done:
		t.Fatalf("serve: %v", err)
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	// A Meshd value naming the daemon's addresses, for the helpers.
	m := &xdstest.Meshd{Addr: addrs[0], HTTPAddr: addrs[1]}
	xdstest.StartBackend(t, m, xdstest.BackendOptions{Name: "b1", Service: "trading"})
	c := xdstest.Dial(t, m.Addr, "trading", nil)
	xdstest.WaitFor(ctx, t, "a call through meshd serve", func() error {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		defer ccancel()
		_, err := c.UnaryCall(cctx, &testgrpc.SimpleRequest{})
		return err
	})
	stop()
	if err := <-done; err != nil {
		t.Errorf("serve after cancel: %v", err)
	}
}
