package spire

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Version is the SPIRE release tools/spire/build.sh builds and this harness runs.
const Version = "v1.13.3"

// SkipEnv names the environment variable that, set to 1, makes [Start] skip
// the test instead of failing when the SPIRE binaries are missing.
const SkipEnv = "GRIDMESH_SKIP_SPIRE"

// DirEnv names the environment variable that overrides the binary cache
// directory; tools/spire/build.sh reads the same variable.
const DirEnv = "GRIDMESH_SPIRE_DIR"

// readyTimeout bounds each wait for a process to become healthy. Generous: the
// machines that run these tests have two shared cores.
const readyTimeout = 90 * time.Second

// cliTimeout bounds each spire-server CLI call.
const cliTimeout = 30 * time.Second

// stopGrace is how long a process gets after SIGTERM before SIGKILL.
const stopGrace = 10 * time.Second

// Config sets up a [Deployment]. The zero value is valid.
type Config struct {
	// TrustDomain is the server's trust domain. Default "gridmesh.test".
	TrustDomain string
	// CATTL is the server's ca_ttl. Default 24h, so no CA rotation happens
	// by itself during a test; force one with the X509 authority methods.
	// SPIRE prepares the next CA at half of it and activates it at five sixths,
	// so a short CATTL (minutes) makes the server rotate its CA on its own.
	CATTL time.Duration
	// DefaultX509SVIDTTL is the server's default_x509_svid_ttl, for entries
	// registered without their own TTL. Default 1h.
	DefaultX509SVIDTTL time.Duration
	// AgentTTL is the server's agent_ttl, the lifetime of agent SVIDs. Default 1h.
	AgentTTL time.Duration
	// SyncInterval is how often agents sync entries, SVIDs and bundles with
	// the server (agent experimental.sync_interval). Default 1s, so a new entry
	// or bundle reaches workloads within seconds.
	SyncInterval time.Duration
	// LogLevel for both processes. Default "INFO".
	LogLevel string
}

func (c *Config) setDefaults() {
	if c.TrustDomain == "" {
		c.TrustDomain = "gridmesh.test"
	}
	if c.CATTL == 0 {
		c.CATTL = 24 * time.Hour
	}
	if c.DefaultX509SVIDTTL == 0 {
		c.DefaultX509SVIDTTL = time.Hour
	}
	if c.AgentTTL == 0 {
		c.AgentTTL = time.Hour
	}
	if c.SyncInterval == 0 {
		c.SyncInterval = time.Second
	}
	if c.LogLevel == "" {
		c.LogLevel = "INFO"
	}
}

// Deployment is a running SPIRE server with one or more agents. Its methods
// take the testing.TB of the calling test and fail it on error; call them from
// the test goroutine. Methods are safe for concurrent use.
type Deployment struct {
	cfg        Config
	td         spiffeid.TrustDomain
	serverBin  string
	agentBin   string
	dir        string // root temporary directory
	serverDir  string
	serverSock string
	port       int

	mu     sync.Mutex
	server *process
	agents []*Agent
}

// Agent is one spire-agent of a [Deployment].
type Agent struct {
	d      *Deployment
	id     spiffeid.ID
	dir    string
	socket string
	config string

	mu   sync.Mutex
	proc *process
}

// Binaries returns the paths of the cached spire-server and spire-agent, or
// an error that says how to build them.
func Binaries() (server, agent string, err error) {
	dir := os.Getenv(DirEnv)
	if dir == "" {
		cache := os.Getenv("XDG_CACHE_HOME")
		if cache == "" {
			home, herr := os.UserHomeDir()
			if herr != nil {
				return "", "", fmt.Errorf("spire: no cache dir: %w", herr)
			}
			cache = filepath.Join(home, ".cache")
		}
		dir = filepath.Join(cache, "gridmesh", "spire-"+Version)
	}
	server = filepath.Join(dir, "spire-server")
	agent = filepath.Join(dir, "spire-agent")
	stamp, serr := os.ReadFile(filepath.Join(dir, "stamp"))
	_, e1 := os.Stat(server)
	_, e2 := os.Stat(agent)
	if serr != nil || e1 != nil || e2 != nil {
		return "", "", fmt.Errorf("spire: SPIRE %s binaries not found in %s: run `bash tools/spire/build.sh` from the repository root (about 15 minutes the first time, then cached), or set %s=1 to skip these tests", Version, dir, SkipEnv)
	}
	if !strings.HasPrefix(string(stamp), "spire "+Version+" ") {
		return "", "", fmt.Errorf("spire: binaries in %s are %q, want SPIRE %s: run `bash tools/spire/build.sh`", dir, strings.TrimSpace(string(stamp)), Version)
	}
	return server, agent, nil
}

// Start starts a SPIRE server and one agent and waits until both are healthy.
// Everything is stopped and removed in t.Cleanup; on failure the tail of each
// process log is logged. It skips the test when GRIDMESH_SKIP_SPIRE=1 and
// fails it when the binaries are missing.
func Start(t testing.TB, cfg Config) *Deployment {
	t.Helper()
	if os.Getenv(SkipEnv) == "1" {
		t.Skipf("%s=1: skipping a test that runs SPIRE", SkipEnv)
	}
	serverBin, agentBin, err := Binaries()
	if err != nil {
		t.Fatal(err)
	}
	cfg.setDefaults()
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		t.Fatalf("spire: Config.TrustDomain %q: %v", cfg.TrustDomain, err)
	}
	dir, err := shortTempDir()
	if err != nil {
		t.Fatal(err)
	}
	d := &Deployment{
		cfg:        cfg,
		td:         td,
		serverBin:  serverBin,
		agentBin:   agentBin,
		dir:        dir,
		serverDir:  filepath.Join(dir, "s"),
		serverSock: filepath.Join(dir, "s", "api.sock"),
	}
	t.Cleanup(func() {
		d.stopAll()
		if t.Failed() {
			d.logTails(t)
		}
		if os.Getenv("GRIDMESH_KEEP_SPIRE") == "" {
			os.RemoveAll(d.dir)
		} else {
			t.Logf("spire: kept %s", d.dir)
		}
	})
	if err := os.MkdirAll(filepath.Join(d.serverDir, "data"), 0o700); err != nil {
		t.Fatal(err)
	}

	// A free port can be taken by someone else between the probe and the
	// server's bind; try a few.
	for attempt := 1; ; attempt++ {
		d.port, err = freePort()
		if err != nil {
			t.Fatal(err)
		}
		if err = d.writeServerConfig(); err != nil {
			t.Fatal(err)
		}
		if err = d.startServer(); err == nil {
			break
		}
		if attempt == 3 || !errors.Is(err, errExited) {
			t.Fatal(err)
		}
	}
	d.AddAgent(t)
	return d
}

// TrustDomain returns the server's trust domain.
func (d *Deployment) TrustDomain() spiffeid.TrustDomain { return d.td }

// ID returns the SPIFFE ID with the given path in the deployment's trust
// domain, e.g. ID("/trading").
func (d *Deployment) ID(path string) spiffeid.ID {
	return spiffeid.RequireFromPath(d.td, path)
}

// Agent returns the first agent, the one [Start] started.
func (d *Deployment) Agent() *Agent {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.agents[0]
}

// SocketPath returns the first agent's Workload API socket path.
func (d *Deployment) SocketPath() string { return d.Agent().SocketPath() }

// Addr returns the first agent's Workload API address, "unix://" + SocketPath().
func (d *Deployment) Addr() string { return d.Agent().Addr() }

// ServerSocketPath returns the server's admin API socket, for spire-server
// commands the harness does not wrap.
func (d *Deployment) ServerSocketPath() string { return d.serverSock }

// RegisterWorkload registers a workload entry under the first agent and
// returns its entry ID. See [Agent.RegisterWorkload].
func (d *Deployment) RegisterWorkload(t testing.TB, spiffeID string, selectors []string, x509SVIDTTL time.Duration) string {
	t.Helper()
	return d.Agent().RegisterWorkload(t, spiffeID, selectors, x509SVIDTTL)
}

// UIDSelector returns the unix workload attestor selector for a user ID,
// "unix:uid:N". UIDSelector(os.Getuid()) matches every process of the test.
func UIDSelector(uid int) string { return "unix:uid:" + strconv.Itoa(uid) }

// DeleteEntry deletes a registration entry. Agents drop the SVID at their
// next sync.
func (d *Deployment) DeleteEntry(t testing.TB, entryID string) {
	t.Helper()
	d.serverCLI(t, []string{"entry", "delete"}, "-entryID", entryID)
}

// StopServer stops the SPIRE server (SIGTERM, then SIGKILL after 10s). Agents
// keep serving the SVIDs they hold until those expire.
func (d *Deployment) StopServer(t testing.TB) {
	t.Helper()
	d.mu.Lock()
	p := d.server
	d.mu.Unlock()
	if p != nil {
		p.stop(stopGrace)
	}
}

// StartServer starts a stopped server again on the same port and data
// directory (same datastore, same CA keys) and waits until it is healthy.
func (d *Deployment) StartServer(t testing.TB) {
	t.Helper()
	if err := d.startServer(); err != nil {
		t.Fatal(err)
	}
}

// RestartAgent restarts the first agent. See [Agent.Restart].
func (d *Deployment) RestartAgent(t testing.TB) {
	t.Helper()
	d.Agent().Restart(t)
}

// AddAgent starts another agent attested with its own join token, with node
// ID spiffe://<td>/agent/<n>, and waits until it is healthy. Entries
// registered under it are served only on its socket.
func (d *Deployment) AddAgent(t testing.TB) *Agent {
	t.Helper()
	d.mu.Lock()
	n := len(d.agents) + 1
	d.mu.Unlock()
	a := &Agent{
		d:   d,
		id:  d.ID("/agent/" + strconv.Itoa(n)),
		dir: filepath.Join(d.dir, "a"+strconv.Itoa(n)),
	}
	a.socket = filepath.Join(a.dir, "w.sock")
	a.config = filepath.Join(a.dir, "agent.conf")
	if err := os.MkdirAll(filepath.Join(a.dir, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	// Let a workload running under another uid reach the socket (the agent
	// makes the socket itself world-writable).
	if err := os.Chmod(a.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bundle := d.serverCLI(t, []string{"bundle", "show"})
	bundlePath := filepath.Join(a.dir, "bootstrap.pem")
	if err := os.WriteFile(bundlePath, bundle, 0o600); err != nil {
		t.Fatal(err)
	}
	out := d.serverCLI(t, []string{"token", "generate"}, "-spiffeID", a.id.String(), "-ttl", "600")
	token, ok := strings.CutPrefix(strings.TrimSpace(string(out)), "Token: ")
	if !ok {
		t.Fatalf("spire: unexpected token generate output: %q", out)
	}
	token, _, _ = strings.Cut(token, "\n")
	if err := os.WriteFile(a.config, []byte(d.agentConfig(a, bundlePath)), 0o600); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	d.agents = append(d.agents, a)
	d.mu.Unlock()
	if err := a.start("-joinToken", token); err != nil {
		t.Fatal(err)
	}
	return a
}

// ID returns the agent's node SPIFFE ID, the parent of its workload entries.
func (a *Agent) ID() spiffeid.ID { return a.id }

// SocketPath returns the agent's Workload API socket path.
func (a *Agent) SocketPath() string { return a.socket }

// Addr returns the agent's Workload API address, "unix://" + SocketPath(),
// the form SPIFFE_ENDPOINT_SOCKET and workloadapi.WithAddr take.
func (a *Agent) Addr() string { return "unix://" + a.socket }

// RegisterWorkload registers a workload entry under this agent and returns
// its entry ID. selectors are unix workload attestor selectors such as
// [UIDSelector](os.Getuid()) or "unix:gid:0"; all of them must match.
// x509SVIDTTL of 0 takes the server default. It does not wait for the agent:
// agents pick new entries up at their next sync (Config.SyncInterval), so a
// workload that asks sooner is refused and retries.
func (a *Agent) RegisterWorkload(t testing.TB, spiffeID string, selectors []string, x509SVIDTTL time.Duration) string {
	t.Helper()
	if len(selectors) == 0 {
		t.Fatal("spire: RegisterWorkload needs at least one selector, e.g. spire.UIDSelector(os.Getuid())")
	}
	flags := []string{"-parentID", a.id.String(), "-spiffeID", spiffeID, "-output", "json"}
	for _, s := range selectors {
		flags = append(flags, "-selector", s)
	}
	if x509SVIDTTL > 0 {
		flags = append(flags, "-x509SVIDTTL", strconv.Itoa(int(x509SVIDTTL/time.Second)))
	}
	out := a.d.serverCLI(t, []string{"entry", "create"}, flags...)
	var resp struct {
		Results []struct {
			Status struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			} `json:"status"`
			Entry struct {
				ID string `json:"id"`
			} `json:"entry"`
		} `json:"results"`
	}
	if err := decodeOne(out, &resp); err != nil || len(resp.Results) != 1 {
		t.Fatalf("spire: unexpected entry create output (%v): %s", err, out)
	}
	r := resp.Results[0]
	if r.Status.Code != 0 || r.Entry.ID == "" {
		t.Fatalf("spire: entry create %s: code %d: %s", spiffeID, r.Status.Code, r.Status.Message)
	}
	return r.Entry.ID
}

// Stop stops the agent (SIGTERM, then SIGKILL after 10s). Its Workload API
// socket goes away; workloads keep the SVIDs they hold.
func (a *Agent) Stop(t testing.TB) {
	t.Helper()
	a.mu.Lock()
	p := a.proc
	a.mu.Unlock()
	if p != nil {
		p.stop(stopGrace)
	}
}

// Start starts a stopped agent again from its data directory (its stored
// SVID and keys, no new attestation) and waits until it is healthy.
func (a *Agent) Start(t testing.TB) {
	t.Helper()
	if err := a.start(); err != nil {
		t.Fatal(err)
	}
}

// Restart stops the agent and starts it again: [Agent.Stop] then [Agent.Start].
func (a *Agent) Restart(t testing.TB) {
	t.Helper()
	a.Stop(t)
	a.Start(t)
}

func (a *Agent) start(extraArgs ...string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.proc != nil {
		if ended, _ := a.proc.exited(); !ended {
			return fmt.Errorf("spire: agent %s is already running", a.id)
		}
	}
	args := append([]string{"run", "-config", a.config}, extraArgs...)
	p, err := startProcess("spire-agent "+a.id.Path(), filepath.Join(a.dir, "agent.log"), a.d.agentBin, args...)
	if err != nil {
		return err
	}
	a.proc = p
	return waitHealthy(p, a.socket)
}

func (d *Deployment) startServer() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.server != nil {
		if ended, _ := d.server.exited(); !ended {
			return errors.New("spire: server is already running")
		}
	}
	p, err := startProcess("spire-server", filepath.Join(d.serverDir, "server.log"), d.serverBin,
		"run", "-config", filepath.Join(d.serverDir, "server.conf"))
	if err != nil {
		return err
	}
	d.server = p
	return waitHealthy(p, d.serverSock)
}

func (d *Deployment) stopAll() {
	d.mu.Lock()
	agents := append([]*Agent(nil), d.agents...)
	server := d.server
	d.mu.Unlock()
	var wg sync.WaitGroup
	for _, a := range agents {
		a.mu.Lock()
		p := a.proc
		a.mu.Unlock()
		if p != nil {
			wg.Go(func() { p.stop(stopGrace) })
		}
	}
	wg.Wait()
	if server != nil {
		server.stop(stopGrace)
	}
}

func (d *Deployment) logTails(t testing.TB) {
	t.Logf("spire-server log (tail):\n%s", tailFile(filepath.Join(d.serverDir, "server.log"), 60))
	d.mu.Lock()
	agents := append([]*Agent(nil), d.agents...)
	d.mu.Unlock()
	for _, a := range agents {
		t.Logf("spire-agent %s log (tail):\n%s", a.id, tailFile(filepath.Join(a.dir, "agent.log"), 60))
	}
}

// waitHealthy polls the gRPC health service on a SPIRE socket until it
// reports SERVING, the process exits, or readyTimeout passes.
func waitHealthy(p *process, socket string) error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if ended, err := p.exited(); ended {
			return fmt.Errorf("spire: %s exited before it was healthy (%v): %w; log tail:\n%s", p.name, err, errExited, p.tail(40))
		}
		if last = checkHealth(ctx, socket); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("spire: %s not healthy after %v: %v; log tail:\n%s", p.name, readyTimeout, last, p.tail(40))
		case <-tick.C:
		}
	}
}

func checkHealth(ctx context.Context, socket string) error {
	if _, err := os.Stat(socket); err != nil {
		return err
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("status %s", resp.GetStatus())
	}
	return nil
}

// serverCLI runs `spire-server <words...> -socketPath <sock> <flags...>` and
// returns its standard output, failing t on error.
func (d *Deployment) serverCLI(t testing.TB, words []string, flags ...string) []byte {
	t.Helper()
	out, err := d.runServerCLI(words, flags...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (d *Deployment) runServerCLI(words []string, flags ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	args := append(append(append([]string(nil), words...), "-socketPath", d.serverSock), flags...)
	cmd := exec.CommandContext(ctx, d.serverBin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("spire: spire-server %s: %w: %s%s", strings.Join(args, " "), err, stderr.String(), out)
	}
	return out, nil
}

func (d *Deployment) writeServerConfig() error {
	data := filepath.Join(d.serverDir, "data")
	conf := fmt.Sprintf(`server {
    bind_address = "127.0.0.1"
    bind_port = "%d"
    socket_path = %q
    trust_domain = %q
    data_dir = %q
    log_level = %q
    ca_key_type = "ec-p256"
    ca_ttl = %q
    default_x509_svid_ttl = %q
    agent_ttl = %q
    ca_subject {
        country = ["US"]
        organization = ["gridmesh test"]
        common_name = "gridmesh test CA"
    }
    experimental {
        cache_reload_interval = "1s"
    }
}

plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = %q
        }
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
    # On disk, so a restarted server keeps its CA: a restart is not a CA rotation.
    KeyManager "disk" {
        plugin_data {
            keys_path = %q
        }
    }
}
`, d.port, d.serverSock, d.td.Name(), data, d.cfg.LogLevel,
		d.cfg.CATTL.String(), d.cfg.DefaultX509SVIDTTL.String(), d.cfg.AgentTTL.String(),
		filepath.Join(data, "datastore.sqlite3"), filepath.Join(data, "keys.json"))
	return os.WriteFile(filepath.Join(d.serverDir, "server.conf"), []byte(conf), 0o600)
}

func (d *Deployment) agentConfig(a *Agent, bundlePath string) string {
	data := filepath.Join(a.dir, "data")
	return fmt.Sprintf(`agent {
    data_dir = %q
    log_level = %q
    server_address = "127.0.0.1"
    server_port = "%d"
    socket_path = %q
    trust_bundle_path = %q
    trust_domain = %q
    experimental {
        sync_interval = %q
    }
}

plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    # On disk, so a restarted agent keeps its key and SVID and needs no new token.
    KeyManager "disk" {
        plugin_data {
            directory = %q
        }
    }
    WorkloadAttestor "unix" {
        plugin_data {}
    }
}
`, data, d.cfg.LogLevel, d.port, a.socket, bundlePath, d.td.Name(), d.cfg.SyncInterval.String(), data)
}

// decodeOne decodes the JSON the spire-server CLI prints for one response:
// an object, or an array of one object.
func decodeOne(out []byte, v any) error {
	trimmed := strings.TrimSpace(string(out))
	if strings.HasPrefix(trimmed, "[") {
		var arr []json.RawMessage
		if err := json.Unmarshal([]byte(trimmed), &arr); err != nil {
			return err
		}
		if len(arr) != 1 {
			return fmt.Errorf("%d responses, want 1", len(arr))
		}
		trimmed = string(arr[0])
	}
	return json.Unmarshal([]byte(trimmed), v)
}

// shortTempDir makes a temporary directory short enough for unix socket
// paths (under 108 bytes): $TMPDIR if that is short, else /tmp.
func shortTempDir() (string, error) {
	base := os.TempDir()
	if len(base) > 40 {
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, "spire")
	if err != nil {
		return "", fmt.Errorf("spire: temp dir: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", fmt.Errorf("spire: temp dir: %w", err)
	}
	return dir, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("spire: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
