package replicas_test

import (
	"bufio"
	"context"
	"encoding/json"
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

	"github.com/gridmesh/gridmesh/controlplane"
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
	addr    string // xDS, registration API and /debug, one port
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	once    sync.Once
}

// startMeshd runs `meshd serve` with args on a free port and waits until it
// serves. It is stopped at cleanup; its log goes to the test log if the
// test failed.
func startMeshd(t *testing.T, bin, name string, args ...string) *meshdProc {
	t.Helper()
	m := &meshdProc{name: name, logPath: filepath.Join(t.TempDir(), name+".log"), done: make(chan struct{})}
	logf, err := os.Create(m.logPath)
	if err != nil {
		t.Fatal(err)
	}
	m.cmd = exec.Command(bin, append([]string{"serve", "-listen", "127.0.0.1:0", "-startup-grace", "0", "-insecure-plaintext-xds-for-local-debugging"}, args...)...)
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

// getJSON GETs path from m's HTTP API into out.
func (m *meshdProc) getJSON(ctx context.Context, path string, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m.addr+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
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
