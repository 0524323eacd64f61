package consul

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// Version is the Consul release tools/consul/build.sh builds and this
// harness runs.
const Version = "v1.14.11"

// BinEnv names the environment variable that, when set, is the path of the
// consul binary to run instead of the cached one.
const BinEnv = "GRIDMESH_CONSUL_BIN"

// DirEnv names the environment variable that overrides the binary cache
// directory; tools/consul/build.sh reads the same variable.
const DirEnv = "GRIDMESH_CONSUL_DIR"

// readyTimeout bounds each wait for an agent to have a leader. Generous: the
// machines that run these tests have two shared cores.
const readyTimeout = 60 * time.Second

// stopGrace is how long an agent gets after SIGINT before SIGKILL.
const stopGrace = 10 * time.Second

// nodeName is every agent's node name: agents never share a cluster, so
// the name need not differ between them.
const nodeName = "gridmesh-test"

// Option configures an agent [Start] starts.
type Option func(*config)

type config struct {
	datacenter string
	acls       bool
	hcl        []string
}

// WithDatacenter sets the agent's datacenter. Default "dc1".
func WithDatacenter(dc string) Option { return func(c *config) { c.datacenter = dc } }

// WithACLs enables ACLs with default policy deny. The agent bootstraps a
// management token ([Agent.ManagementToken]), which [Agent.Client] presents
// and the agent uses for its own catalog writes; requests without a token get
// the anonymous token's rights, which are none.
func WithACLs() Option { return func(c *config) { c.acls = true } }

// WithHCL adds agent configuration in HCL, applied after the harness's own
// (it wins where both set a value), e.g.
// `connect { ca_config { leaf_cert_ttl = "2h" } }`. It may be given more
// than once.
func WithHCL(hcl string) Option { return func(c *config) { c.hcl = append(c.hcl, hcl) } }

// Agent is a running Consul agent (a single-server cluster in -dev mode).
// Its methods take the testing.TB of the calling test and fail it on error;
// call them from the test goroutine. Methods are safe for concurrent use.
type Agent struct {
	bin     string
	cfg     config
	dir     string // root temporary directory: data/ and agent.log
	logPath string
	token   string // management token, "" without ACLs
	nodeID  string // -node-id, so the harness knows its agent when it answers

	mu         sync.Mutex
	ports      ports
	proc       *process
	clients    map[string]*api.Client // by token
	transports []*http.Transport
}

// Binary returns the path of the consul binary to run, or an error that
// says how to build it.
func Binary() (string, error) {
	if bin := os.Getenv(BinEnv); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			return "", fmt.Errorf("consul: %s=%s: %w", BinEnv, bin, err)
		}
		return bin, nil
	}
	dir := os.Getenv(DirEnv)
	if dir == "" {
		cache := os.Getenv("XDG_CACHE_HOME")
		if cache == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return "", fmt.Errorf("consul: no cache dir: %w", err)
			}
			cache = filepath.Join(home, ".cache")
		}
		dir = filepath.Join(cache, "gridmesh", "consul-"+Version)
	}
	bin := filepath.Join(dir, "consul")
	stamp, serr := os.ReadFile(filepath.Join(dir, "stamp"))
	if _, err := os.Stat(bin); err != nil || serr != nil {
		return "", fmt.Errorf("consul: Consul %s binary not found in %s: run `bash tools/consul/build.sh` from the repository root (about 7 minutes the first time, then cached), or set %s to a consul binary", Version, dir, BinEnv)
	}
	if !strings.HasPrefix(string(stamp), "consul "+Version+" ") {
		return "", fmt.Errorf("consul: the binary in %s is %q, want Consul %s: run `bash tools/consul/build.sh`", dir, strings.TrimSpace(string(stamp)), Version)
	}
	return bin, nil
}

// Start starts a Consul agent in -dev mode on 127.0.0.1 and blocks until it
// has a leader, its Connect CA is initialized and its node is in the catalog
// (a second or two). The agent is stopped and its directory removed in
// t.Cleanup; if the test failed, the tail of the agent's log goes to the
// test log. GRIDMESH_KEEP_CONSUL=1 keeps the directory.
func Start(t testing.TB, opts ...Option) *Agent {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	cfg := config{datacenter: "dc1"}
	for _, o := range opts {
		o(&cfg)
	}
	dir, err := os.MkdirTemp("", "gridmesh-consul-")
	if err != nil {
		t.Fatalf("consul: %v", err)
	}
	a := &Agent{bin: bin, cfg: cfg, dir: dir, logPath: filepath.Join(dir, "agent.log"), nodeID: newUUID()}
	if cfg.acls {
		a.token = newUUID()
	}
	t.Cleanup(func() {
		a.mu.Lock()
		p := a.proc
		a.proc = nil
		a.mu.Unlock()
		if p != nil {
			p.interrupt(stopGrace)
		}
		a.closeClients()
		if t.Failed() {
			t.Logf("consul: agent log %s (last 60 lines):\n%s", a.logPath, tailFile(a.logPath, 60))
		}
		if os.Getenv("GRIDMESH_KEEP_CONSUL") == "" {
			os.RemoveAll(a.dir)
		} else {
			t.Logf("consul: kept %s", a.dir)
		}
	})
	// A free port can be taken by another process between the probe and the
	// agent's bind; try a few sets.
	for attempt := 1; ; attempt++ {
		p, err := freePorts()
		if err != nil {
			t.Fatal(err)
		}
		a.mu.Lock()
		a.ports = p
		a.mu.Unlock()
		err = a.start()
		if err == nil {
			return a
		}
		if attempt == 5 || !errors.Is(err, errBind) {
			t.Fatal(err)
		}
		t.Logf("consul: attempt %d: %v; trying other ports", attempt, err)
	}
}

var errBind = errors.New("a port was taken")

// args is the agent's command line.
func (a *Agent) args() []string {
	p := a.ports
	args := []string{
		"agent", "-dev",
		"-client", "127.0.0.1", "-bind", "127.0.0.1",
		"-http-port", strconv.Itoa(p.http),
		"-server-port", strconv.Itoa(p.server),
		"-serf-lan-port", strconv.Itoa(p.serfLAN),
		"-serf-wan-port", strconv.Itoa(p.serfWAN),
		"-grpc-port", "-1", "-grpc-tls-port", "-1", "-dns-port", "-1",
		"-data-dir", filepath.Join(a.dir, "data"),
		"-datacenter", a.cfg.datacenter,
		"-node", nodeName, "-node-id", a.nodeID,
		"-log-level", "info",
		// A server's graceful leave (/v1/agent/leave; SIGINT does not
		// leave a server) waits leave_drain_time (5s) for RPCs to drain;
		// a test agent has none to wait for.
		"-hcl", `performance { leave_drain_time = "0s" }`,
	}
	if a.cfg.acls {
		args = append(args, "-hcl", fmt.Sprintf(`acl {
  enabled = true
  default_policy = "deny"
  enable_token_persistence = false
  tokens {
    initial_management = %q
    agent = %q
  }
}`, a.token, a.token))
	}
	for _, h := range a.cfg.hcl {
		args = append(args, "-hcl", h)
	}
	return args
}

// start runs the agent on a.ports and waits until it is ready.
func (a *Agent) start() error {
	if err := os.MkdirAll(filepath.Join(a.dir, "data"), 0o700); err != nil {
		return fmt.Errorf("consul: %w", err)
	}
	a.mu.Lock()
	if a.proc != nil {
		a.mu.Unlock()
		return errors.New("consul: agent already running")
	}
	p, err := startProcess(a.logPath, a.bin, a.args()...)
	if err != nil {
		a.mu.Unlock()
		return err
	}
	a.proc = p
	a.mu.Unlock()
	if err := a.waitReady(p); err != nil {
		p.kill()
		a.mu.Lock()
		if a.proc == p {
			a.proc = nil
		}
		a.mu.Unlock()
		return err
	}
	return nil
}

// waitReady polls until the agent has a leader, an active Connect CA root
// and its own node in the catalog, or fails when the process exits or
// readyTimeout passes.
func (a *Agent) waitReady(p *process) error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	tr := newTransport()
	defer tr.CloseIdleConnections()
	c, err := api.NewClient(&api.Config{Address: a.Addr(), Token: a.token, Transport: tr})
	if err != nil {
		return fmt.Errorf("consul: client: %w", err)
	}
	var last error
	for {
		if ended, werr := p.exited(); ended {
			log := tailFile(a.logPath, 30)
			err := fmt.Errorf("consul: agent exited (%v) before it was ready; log:\n%s", werr, log)
			if strings.Contains(log, "address already in use") {
				return fmt.Errorf("%w: %w", errBind, err)
			}
			return err
		}
		// Each poll is bounded: whatever holds the port may accept a
		// connection and never answer.
		pollCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		last = a.ready(c, (&api.QueryOptions{}).WithContext(pollCtx))
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("consul: agent on %s not ready after %v: %v; log:\n%s", a.Addr(), readyTimeout, last, tailFile(a.logPath, 30))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (a *Agent) ready(c *api.Client, q *api.QueryOptions) error {
	// Whoever answers on the port must be this agent, not another test's
	// that bound it first while this one is failing to.
	var self struct{ Config struct{ NodeID string } }
	if _, err := c.Raw().Query("/v1/agent/self", &self, q); err != nil {
		return err
	}
	if self.Config.NodeID != a.nodeID {
		return fmt.Errorf("%s answered by another agent (node ID %s, want %s)", a.Addr(), self.Config.NodeID, a.nodeID)
	}
	leader, err := c.Status().LeaderWithQueryOptions(q)
	if err != nil {
		return err
	}
	if leader == "" {
		return errors.New("no leader yet")
	}
	roots, _, err := c.Connect().CARoots(q)
	if err != nil {
		return err
	}
	if roots.ActiveRootID == "" {
		return errors.New("no active Connect CA root yet")
	}
	node, _, err := c.Catalog().Node(nodeName, q)
	if err != nil {
		return err
	}
	if node == nil {
		return errors.New("agent's node not in the catalog yet")
	}
	return nil
}

// Addr returns the agent's HTTP API address, "127.0.0.1:<port>", the form
// api.Config.Address and CONSUL_HTTP_ADDR take. It stays the same across
// Stop and Restart.
func (a *Agent) Addr() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return "127.0.0.1:" + strconv.Itoa(a.ports.http)
}

// Datacenter returns the agent's datacenter.
func (a *Agent) Datacenter() string { return a.cfg.datacenter }

// ManagementToken returns the agent's management token ([WithACLs]), or ""
// when ACLs are off.
func (a *Agent) ManagementToken() string { return a.token }

// LogPath returns the path of the agent's log file.
func (a *Agent) LogPath() string { return a.logPath }

// Client returns the agent's consul/api client that presents the
// management token when ACLs are on (no token otherwise): the same client
// on every call, safe for concurrent use. Its idle connections are closed
// when the test ends.
func (a *Agent) Client() *api.Client { return a.ClientWithToken(a.token) }

// ClientWithToken returns the agent's consul/api client that presents token
// ("" for the anonymous token): one client per token, as [Agent.Client].
func (a *Agent) ClientWithToken(token string) *api.Client {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.clients[token]; ok {
		return c
	}
	tr := newTransport()
	c, err := api.NewClient(&api.Config{Address: "127.0.0.1:" + strconv.Itoa(a.ports.http), Token: token, Transport: tr})
	if err != nil {
		// api.NewClient fails only on a bad address or TLS config, neither
		// of which the harness produces.
		panic(fmt.Sprintf("consul: client for port %d: %v", a.ports.http, err))
	}
	if a.clients == nil {
		a.clients = map[string]*api.Client{}
	}
	a.clients[token] = c
	a.transports = append(a.transports, tr)
	return c
}

// newTransport is cleanhttp's pooled transport, as api.DefaultConfig uses,
// but ours, so the harness can close its idle connections (goleak).
func newTransport() *http.Transport {
	return api.DefaultConfig().Transport
}

func (a *Agent) closeClients() {
	a.mu.Lock()
	trs := a.transports
	a.mu.Unlock()
	for _, tr := range trs {
		tr.CloseIdleConnections()
	}
}

// Stop kills the agent (SIGKILL): no graceful leave, open connections are
// reset and new ones refused. Its data directory stays for [Agent.Restart].
// It blocks until the process has ended; calling it on a stopped agent does
// nothing.
func (a *Agent) Stop(t testing.TB) {
	t.Helper()
	a.mu.Lock()
	p := a.proc
	a.proc = nil
	a.mu.Unlock()
	if p != nil {
		p.kill()
	}
}

// Pause freezes the agent with SIGSTOP, as a network partition looks to a
// client: connections open and new ones are accepted by the kernel, but
// nothing is answered until [Agent.Resume].
func (a *Agent) Pause(t testing.TB) {
	t.Helper()
	a.signalRunning(t, "Pause", syscall.SIGSTOP)
}

// Resume continues a paused agent with SIGCONT. Requests that waited are
// answered; blocking queries that outlived their wait answer at once.
func (a *Agent) Resume(t testing.TB) {
	t.Helper()
	a.signalRunning(t, "Resume", syscall.SIGCONT)
}

func (a *Agent) signalRunning(t testing.TB, method string, sig syscall.Signal) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.proc == nil {
		t.Fatalf("consul: %s: the agent is not running", method)
	}
	if err := a.proc.signalAndSettle(sig); err != nil {
		t.Fatalf("consul: %s: %v", method, err)
	}
}

// Restart starts the agent again on the same ports and data directory,
// killing it first if it runs, and blocks until it is ready. Services and
// checks registered through the agent API come back (a TTL check with the
// status of its last update while that is fresh); everything else in the
// catalog, KV, intentions, config entries, ACL tokens other than the
// management token, and the Connect CA start over, and the catalog's
// indexes go backwards (see the package doc).
func (a *Agent) Restart(t testing.TB) {
	t.Helper()
	a.Stop(t)
	a.restart(t)
}

// RestartEmpty is [Agent.Restart] with an empty data directory: the agent
// comes back on the same ports knowing nothing, as a rebuilt cluster.
func (a *Agent) RestartEmpty(t testing.TB) {
	t.Helper()
	a.Stop(t)
	if err := os.RemoveAll(filepath.Join(a.dir, "data")); err != nil {
		t.Fatalf("consul: %v", err)
	}
	a.restart(t)
}

// restart starts a stopped agent on its ports. The ports were free when the
// agent held them, but another process may have taken one since; that is
// retried for a few seconds, then the test fails.
func (a *Agent) restart(t testing.TB) {
	t.Helper()
	var err error
	for attempt := 1; attempt <= 10; attempt++ {
		if err = a.start(); err == nil || !errors.Is(err, errBind) {
			break
		}
		time.Sleep(500 * time.Millisecond) // wait for the port to be released
	}
	if err != nil {
		t.Fatalf("consul: restart on %s: %v", a.Addr(), err)
	}
}

// newUUID returns a random version 4 UUID, the form Consul's ACL tokens take.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
