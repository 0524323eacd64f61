package replicas_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/controlplane/registration"
	"github.com/gridmesh/gridmesh/security"
)

// buildMeshd compiles cmd/meshd into a temporary directory.
func buildMeshd(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not at %s: %v", root, err)
	}
	bin := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin+"/", "./cmd/meshd")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/meshd: %v\n%s", err, out)
	}
	return filepath.Join(bin, "meshd")
}

// meshdProc is a meshd serve process.
type meshdProc struct {
	name    string
	addr    string       // xDS, registration API and /debug, one port
	ops     *tls.Config  // an operator's mTLS config for meshd's HTTP API
	hc      *http.Client // with ops
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	once    sync.Once
}

// startMeshd runs `meshd serve` over mTLS with cp's SVID files and
// operator, and args, on a free port and waits until it serves. It is
// stopped at cleanup; its log goes to the test log if the test failed.
func startMeshd(t *testing.T, bin, name string, cp *controlPlaneIdentity, args ...string) *meshdProc {
	t.Helper()
	m := &meshdProc{name: name, logPath: filepath.Join(t.TempDir(), name+".log"), done: make(chan struct{}), ops: cp.ops}
	tr := &http.Transport{TLSClientConfig: cp.ops}
	m.hc = &http.Client{Transport: tr}
	t.Cleanup(tr.CloseIdleConnections)
	args = append([]string{"-svid-cert", cp.cert, "-svid-key", cp.key, "-svid-bundle", cp.bundle, "-operator-id", cp.operator.String()}, args...)
	logf, err := os.Create(m.logPath)
	if err != nil {
		t.Fatal(err)
	}
	m.cmd = exec.Command(bin, append([]string{"serve", "-listen", "127.0.0.1:0", "-startup-grace", "0"}, args...)...)
	stderr, err := m.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addr := make(chan string, 1)
	go func() {
		defer close(m.done)
		defer logf.Close()
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			if strings.Contains(line, `msg="meshd serving"`) {
				for _, f := range strings.Fields(line) {
					if a, ok := strings.CutPrefix(f, "xds="); ok {
						addr <- a
					}
				}
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		_ = m.cmd.Wait()
	}()
	t.Cleanup(func() {
		m.kill(syscall.SIGTERM)
		if t.Failed() {
			data, _ := os.ReadFile(m.logPath)
			t.Logf("meshd %s log:\n%s", name, data)
		}
	})
	select {
	case m.addr = <-addr:
	case <-m.done:
		data, _ := os.ReadFile(m.logPath)
		t.Fatalf("meshd %s exited before serving:\n%s", name, data)
	case <-time.After(30 * time.Second):
		m.kill(syscall.SIGKILL)
		t.Fatalf("meshd %s did not say where it serves within 30s", name)
	}
	return m
}

// kill sends sig and waits for the process to end (SIGKILL after 10s).
func (m *meshdProc) kill(sig syscall.Signal) {
	m.once.Do(func() {
		_ = m.cmd.Process.Signal(sig)
		select {
		case <-m.done:
		case <-time.After(10 * time.Second):
			_ = m.cmd.Process.Kill()
			<-m.done
		}
	})
}

// list returns the registrations m lists, asked as the operator.
func (m *meshdProc) list(ctx context.Context) ([]registration.Registration, error) {
	c := registration.NewTLSClient(m.ops, m.addr)
	defer c.Close()
	return c.List(ctx)
}

// controlPlaneIdentity is meshd's SVID in files (for -svid-cert, -svid-key
// and -svid-bundle) and an operator's mTLS config for meshd's HTTP API.
type controlPlaneIdentity struct {
	cert, key, bundle string
	operator          spiffeid.ID
	ops               *tls.Config
}

// newControlPlaneIdentity writes the SVID of spiffe://<td>/meshd from ca
// to files, and makes the operator spiffe://<td>/ops.
func newControlPlaneIdentity(t *testing.T, ca *security.DevCA, td spiffeid.TrustDomain) *controlPlaneIdentity {
	t.Helper()
	src, err := ca.Source(spiffeid.RequireFromPath(td, "/meshd"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
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
	cp := &controlPlaneIdentity{cert: filepath.Join(dir, "svid.pem"), key: filepath.Join(dir, "key.pem"), bundle: filepath.Join(dir, "bundle.pem"),
		operator: spiffeid.RequireFromPath(td, "/ops")}
	for path, data := range map[string][]byte{cp.cert: certPEM, cp.key: keyPEM, cp.bundle: bundlePEM} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ops, err := ca.Source(cp.operator)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ops.Close() })
	cp.ops = tlsconfig.MTLSClientConfig(ops, ops, tlsconfig.AuthorizeID(spiffeid.RequireFromPath(td, "/meshd")))
	cp.ops.NextProtos = []string{"http/1.1"} // meshd answers h2 with its gRPC server
	return cp
}

// getJSON GETs path from m's HTTP API into out.
func (m *meshdProc) getJSON(ctx context.Context, path string, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+m.addr+path, nil)
	if err != nil {
		return err
	}
	resp, err := m.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("GET %s from meshd %s: %s: %s", path, m.name, resp.Status, b)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

const listenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"

// subscribers counts m's xDS streams subscribed to the client listener of
// service (the mesh's xds:///service channels; servers subscribe to their
// server-side listeners instead).
func (m *meshdProc) subscribers(ctx context.Context, service string) (int, error) {
	var clients []controlplane.ClientStatus
	if err := m.getJSON(ctx, "/debug/clients", &clients); err != nil {
		return 0, err
	}
	n := 0
	for _, c := range clients {
		if slices.Contains(c.Names[listenerType], service) {
			n++
		}
	}
	return n, nil
}

// version is the snapshot version m serves.
func (m *meshdProc) version(ctx context.Context) (string, error) {
	var v struct {
		Version string `json:"version"`
	}
	err := m.getJSON(ctx, "/debug/config", &v)
	return v.Version, err
}
