// Package platform runs the whole REC platform as separate processes on
// loopback, for the demo runner and the end-to-end test: `meshd dev`
// serving every workload's identity, registry, accounts, two or more
// trading instances sharing one journal, settlement and the gateway. It
// can kill (SIGKILL) and restart any of them.
//
//	p, err := platform.Start(ctx, platform.Config{Bin: "bin", Dir: dir})
//	defer p.Stop()
//	err = p.Kill("trading-1")
//	err = p.Restart(ctx, "trading-1")
package platform

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/gridmesh/gridmesh/examples/rec/policy"
	"github.com/gridmesh/gridmesh/examples/rec/recmesh"
	"github.com/gridmesh/gridmesh/security"
)

// Config says what to start.
type Config struct {
	// Bin holds the binaries: meshd, registry, accounts, trading,
	// settlement, gateway. Required.
	Bin string
	// Dir holds the sockets, databases and logs. Required.
	Dir string
	// Trading is the number of trading instances. Default 2.
	Trading int
	// SVIDTTL is the lifetime of the workloads' SVIDs; they rotate at half
	// of it. Default 1 hour.
	SVIDTTL time.Duration
	// StartTimeout bounds the wait for each process to serve. Default 30s.
	StartTimeout time.Duration
	// Metrics turns on each service's Prometheus endpoint (Proc.Metrics),
	// through the standard OTEL_METRICS_EXPORTER=prometheus.
	Metrics bool
	// Env is added to every service's environment, e.g.
	// OTEL_TRACES_EXPORTER=otlp.
	Env []string
	// Socket, when set, is the one SPIFFE Workload API every service and
	// client uses (a SPIRE agent's), instead of meshd dev's socket per
	// workload; each process takes the SVID spiffe://<td>/<workload>.
	// meshd dev still runs, for xDS.
	Socket string
	// XDS runs the platform on meshd's xDS: servers register with meshd
	// and take mTLS and RBAC (policy.MeshdConfig) from it, clients dial
	// xds:///<service>. Default: static targets and in-code policy.
	XDS bool
	// ConsulBin, when set, runs the platform on a real Consul agent (this
	// consul binary, v1.14.11 from tools/consul/build.sh) instead of meshd
	// dev: the agent is the catalog (servers register with a health check,
	// clients dial consul:///<service>), the identity provider (each
	// workload's SVID from its Connect CA) and the intention store (the
	// matrix as L7 intentions, ConsulConfigEntries). ACLs are on with
	// default deny; each workload has its own token. SVIDTTL, Socket and
	// XDS do not apply.
	ConsulBin string
}

// Proc is one started process.
type Proc struct {
	Name string
	// Addr is where it serves (gRPC, or HTTPS for the gateway).
	Addr string
	// Admin is its mesh admin endpoint, Metrics its Prometheus endpoint
	// (with Config.Metrics); empty for meshd.
	Admin, Metrics string
	Log            string
	env            []string
	args           []string
	workload       string
	stop           syscall.Signal // how Stop asks it to end; default SIGTERM
	cmd            *exec.Cmd
	done           chan struct{}
	Restarts       int
}

// Platform is a running platform. Its methods are safe for concurrent use.
type Platform struct {
	cfg   Config
	mu    sync.Mutex
	procs map[string]*Proc
	order []string
	// GatewayURL is the gateway's base URL, https://127.0.0.1:port (mesh
	// mTLS: call it with an Operator's HTTP client).
	GatewayURL string
	// TradingAddrs are the trading instances' addresses, comma-separated.
	TradingAddrs string
	// Addrs maps a workload to its gRPC target: an address list
	// (comma-separated), or xds:///<workload> with Config.XDS.
	Addrs map[string]string
	// ControlPlane is meshd's xDS address.
	ControlPlane string
	consul       *consulAgent
}

// Socket returns the Workload API socket of workload, as an address for
// SPIFFE_ENDPOINT_SOCKET.
func (p *Platform) Socket(workload string) string {
	if p.cfg.ConsulBin != "" {
		return ""
	}
	if p.cfg.Socket != "" {
		return p.cfg.Socket
	}
	return "unix://" + filepath.Join(p.cfg.Dir, workload+".sock")
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Start starts meshd dev and every service, each once it can reach what it
// depends on, and returns when all serve. On failure it stops what it
// started.
func Start(ctx context.Context, cfg Config) (_ *Platform, err error) {
	if cfg.Bin == "" || cfg.Dir == "" {
		return nil, errors.New("platform: Config.Bin and Config.Dir are required")
	}
	if cfg.Trading <= 0 {
		cfg.Trading = 2
	}
	if cfg.ConsulBin != "" && (cfg.XDS || cfg.Socket != "") {
		return nil, errors.New("platform: Config.ConsulBin runs the platform on Consul, which replaces Config.XDS and Config.Socket: set one of them")
	}
	if cfg.SVIDTTL <= 0 {
		cfg.SVIDTTL = time.Hour
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 30 * time.Second
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("platform: %w", err)
	}
	p := &Platform{cfg: cfg, procs: map[string]*Proc{}, Addrs: map[string]string{}}
	defer func() {
		if err != nil {
			p.Stop()
		}
	}()

	if cfg.ConsulBin != "" {
		if err := p.startConsul(ctx); err != nil {
			return nil, err
		}
		return p, p.startServices(ctx, consulTargets(), "")
	}
	ready := filepath.Join(cfg.Dir, "meshd.ready")
	xds, err := freePort()
	if err != nil {
		return nil, err
	}
	p.ControlPlane = xds
	meshd := []string{filepath.Join(cfg.Bin, "meshd"), "dev",
		"-identities", strings.Join(policy.Workloads, ","), "-socket-dir", cfg.Dir,
		"-svid-ttl", cfg.SVIDTTL.String(), "-ready-file", ready, "-xds", xds}
	if cfg.XDS {
		conf := filepath.Join(cfg.Dir, "meshd.yaml")
		td := spiffeid.RequireTrustDomainFromString("gridmesh.dev")
		if cfg.Socket != "" {
			if td, err = trustDomain(ctx, cfg.Socket); err != nil {
				return nil, err
			}
		}
		if err := os.WriteFile(conf, []byte(policy.MeshdConfig(td, recmesh.MarketHeader)), 0o644); err != nil {
			return nil, err
		}
		meshd = append(meshd, "-config", conf)
		if cfg.Socket != "" {
			// The workloads' SVIDs come from that Workload API, so meshd's
			// must too (an entry for /meshd, see the Makefile's SPIRE demo):
			// the mesh accepts only spiffe://<td>/meshd as its control plane.
			meshd = append(meshd, "-spiffe-socket", cfg.Socket, "-spiffe-id", spiffeid.RequireFromPath(td, "/meshd").String())
		}
	}
	if err := p.start(ctx, &Proc{Name: "meshd", Addr: xds, args: meshd}, func() bool {
		_, err := os.Stat(ready)
		return err == nil
	}); err != nil {
		return nil, err
	}
	var targets map[string]string
	if cfg.XDS {
		targets = map[string]string{}
		for _, w := range []string{policy.Registry, policy.Accounts, policy.Trading, policy.Settlement} {
			targets[w] = "xds:///" + w
		}
	}
	return p, p.startServices(ctx, targets, xds)
}

// startServices starts the services on free ports, each once what it
// depends on serves. targets, when not nil, are the gRPC targets the
// services and clients dial (xds:///, consul:///) instead of the address
// lists; xds is meshd's address with Config.XDS.
func (p *Platform) startServices(ctx context.Context, targets map[string]string, xds string) (err error) {
	cfg := p.cfg
	addr := map[string]string{}
	for _, name := range []string{"registry", "accounts", "settlement", "gateway"} {
		if addr[name], err = freePort(); err != nil {
			return err
		}
	}
	var trading []string
	for i := 1; i <= cfg.Trading; i++ {
		a, err := freePort()
		if err != nil {
			return err
		}
		trading = append(trading, a)
	}
	p.TradingAddrs = strings.Join(trading, ",")
	p.GatewayURL = "https://" + addr["gateway"]
	p.Addrs = map[string]string{
		policy.Registry: addr["registry"], policy.Accounts: addr["accounts"],
		policy.Settlement: addr["settlement"], policy.Trading: p.TradingAddrs,
	}
	for w, t := range targets {
		p.Addrs[w] = t
	}
	target := p.Addrs
	db := func(name string) string { return filepath.Join(cfg.Dir, name+".db") }
	bin := func(name string) string { return filepath.Join(cfg.Bin, name) }
	svc := func(name, workload string, args ...string) *Proc {
		if cfg.XDS {
			args = append(args, "-control-plane", xds)
		}
		return &Proc{Name: name, workload: workload, args: append([]string{bin(workload)}, args...)}
	}
	procs := []*Proc{
		svc("registry", policy.Registry, "-listen", addr["registry"], "-db", db("registry")),
		svc("accounts", policy.Accounts, "-listen", addr["accounts"], "-db", db("accounts")),
	}
	for i, a := range trading {
		name := fmt.Sprintf("trading-%d", i+1)
		procs = append(procs, svc(name, policy.Trading, "-listen", a, "-instance", name, "-db", db("trading"),
			"-accounts", target[policy.Accounts], "-registry", target[policy.Registry]))
	}
	procs = append(procs,
		svc("settlement", policy.Settlement, "-listen", addr["settlement"], "-db", db("settlement"),
			"-trading", target[policy.Trading], "-accounts", target[policy.Accounts], "-registry", target[policy.Registry]),
		svc("gateway", policy.Gateway, "-listen", addr["gateway"], "-db", db("gateway"),
			"-trading", target[policy.Trading], "-accounts", target[policy.Accounts], "-registry", target[policy.Registry], "-settlement", target[policy.Settlement]),
	)
	for _, pr := range procs {
		pr.Addr = pr.args[slices.Index(pr.args, "-listen")+1]
		if pr.Admin, err = freePort(); err != nil {
			return err
		}
		pr.args = append(pr.args, "-admin", pr.Admin)
		pr.env = append([]string{"OTEL_SERVICE_NAME=" + pr.Name}, cfg.Env...)
		pr.env = append(pr.env, p.ConsulEnv(pr.workload)...)
		if cfg.Metrics {
			if pr.Metrics, err = freePort(); err != nil {
				return err
			}
			host, port, _ := net.SplitHostPort(pr.Metrics)
			pr.env = append(pr.env, "OTEL_METRICS_EXPORTER=prometheus", "OTEL_EXPORTER_PROMETHEUS_HOST="+host, "OTEL_EXPORTER_PROMETHEUS_PORT="+port)
		}
		if err := p.start(ctx, pr, nil); err != nil {
			return err
		}
		if p.consul != nil && pr.workload != policy.Gateway {
			// Its dependents find it through the catalog: wait for its
			// passing registration (every instance, for trading).
			n := 1
			if pr.workload == policy.Trading {
				n = slices.Index(trading, pr.Addr) + 1
			}
			if err := p.waitConsulInstances(ctx, pr.workload, n); err != nil {
				return err
			}
		}
	}
	return nil
}

// start runs pr and waits until ready reports true, or, when ready is nil,
// until its log says "serving".
func (p *Platform) start(ctx context.Context, pr *Proc, ready func() bool) error {
	pr.Log = filepath.Join(p.cfg.Dir, pr.Name+".log")
	f, err := os.OpenFile(pr.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if pr.Restarts > 0 {
		fmt.Fprintf(f, "--- restart %d ---\n", pr.Restarts)
	}
	offset, _ := f.Seek(0, 2)
	cmd := exec.Command(pr.args[0], pr.args[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = os.Environ()
	if pr.workload != "" && p.Socket(pr.workload) != "" {
		cmd.Env = append(cmd.Env, "SPIFFE_ENDPOINT_SOCKET="+p.Socket(pr.workload))
	}
	cmd.Env = append(cmd.Env, pr.env...)
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("platform: start %s: %w", pr.Name, err)
	}
	pr.cmd = cmd
	pr.done = make(chan struct{})
	go func(done chan struct{}) { cmd.Wait(); close(done) }(pr.done)
	p.mu.Lock()
	if _, ok := p.procs[pr.Name]; !ok {
		p.order = append(p.order, pr.Name)
	}
	p.procs[pr.Name] = pr
	p.mu.Unlock()

	if ready == nil {
		ready = func() bool {
			b, _ := os.ReadFile(pr.Log)
			return int64(len(b)) > offset && bytes.Contains(b[offset:], []byte(": serving as "))
		}
	}
	deadline := time.Now().Add(p.cfg.StartTimeout)
	for !ready() {
		select {
		case <-pr.done:
			return fmt.Errorf("platform: %s exited while starting: %s", pr.Name, tail(pr.Log))
		case <-ctx.Done():
			return fmt.Errorf("platform: starting %s: %w", pr.Name, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("platform: %s did not serve within %v: %s", pr.Name, p.cfg.StartTimeout, tail(pr.Log))
		}
	}
	return nil
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// Proc returns the process called name ("trading-1", "settlement", ...).
func (p *Platform) Proc(name string) *Proc {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.procs[name]
}

// Kill sends SIGKILL to name and waits for it to die.
func (p *Platform) Kill(name string) error {
	pr := p.Proc(name)
	if pr == nil {
		return fmt.Errorf("platform: no process %q", name)
	}
	if err := pr.cmd.Process.Kill(); err != nil {
		return fmt.Errorf("platform: kill %s: %w", name, err)
	}
	<-pr.done
	return nil
}

// Restart starts name again with the same arguments, after Kill, and
// waits until it serves.
func (p *Platform) Restart(ctx context.Context, name string) error {
	pr := p.Proc(name)
	if pr == nil {
		return fmt.Errorf("platform: no process %q", name)
	}
	select {
	case <-pr.done:
	default:
		return fmt.Errorf("platform: %s is still running", name)
	}
	next := &Proc{Name: pr.Name, Addr: pr.Addr, Admin: pr.Admin, Metrics: pr.Metrics, env: pr.env, args: pr.args, workload: pr.workload, stop: pr.stop, Restarts: pr.Restarts + 1}
	return p.start(ctx, next, nil)
}

// Stop ends every process: SIGTERM, then SIGKILL after 10 seconds. It is
// safe to call more than once.
func (p *Platform) Stop() error {
	p.mu.Lock()
	var procs []*Proc
	for _, n := range slices.Backward(p.order) {
		procs = append(procs, p.procs[n])
	}
	p.mu.Unlock()
	for _, pr := range procs {
		select {
		case <-pr.done:
			continue
		default:
		}
		sig := pr.stop
		if sig == 0 {
			sig = syscall.SIGTERM
		}
		pr.cmd.Process.Signal(sig)
		select {
		case <-pr.done:
		case <-time.After(10 * time.Second):
			pr.cmd.Process.Kill()
			<-pr.done
		}
	}
	return nil
}

// Exited lists the processes that are not running and were not killed on
// purpose (a crash), with the tail of their logs.
func (p *Platform) Exited() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, n := range p.order {
		select {
		case <-p.procs[n].done:
			out = append(out, n+": "+strconv.Quote(tail(p.procs[n].Log)))
		default:
		}
	}
	return out
}

// trustDomain asks the Workload API at socket for the trust domain.
func trustDomain(ctx context.Context, socket string) (spiffeid.TrustDomain, error) {
	src, err := security.NewWorkloadAPISource(ctx, security.WorkloadAPIConfig{Address: socket})
	if err != nil {
		return spiffeid.TrustDomain{}, fmt.Errorf("platform: %w", err)
	}
	defer src.Close()
	id, err := security.ID(src)
	if err != nil {
		return spiffeid.TrustDomain{}, fmt.Errorf("platform: %w", err)
	}
	return id.TrustDomain(), nil
}
