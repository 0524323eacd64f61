// Command harness runs the gridmesh benchmarks end to end: it starts
// servers, haproxy sidecars and load generators as separate processes,
// interleaves the scenarios over several rounds so machine drift hits them
// alike, sums CPU time over every process on a call's path, runs the
// in-process allocation benchmarks, and writes a JSON result file and a
// table with the ratios c/b, c/a and d/b.
//
//	harness [-bin bin] [-out bench-result.json] [-quick] [-rounds 3] [-pin=true]
//
// It needs, in -bin: meshd, benchserver, benchload and (for allocation figures)
// bench.test; and haproxy on PATH.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/gridmesh/gridmesh/bench/internal/loadgen"
	"github.com/gridmesh/gridmesh/bench/internal/pki"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "harness:", err)
		os.Exit(1)
	}
}

type harness struct {
	binDir  string
	dir     string
	haproxy string
	pki     *pki.Files
	l       *launcher
	idDir   string
	byName  map[string]*scenario
}

func (h *harness) bin(name string) string { return filepath.Join(h.binDir, name) }

// identityEnv points a mesh process at the Workload API socket of one of
// meshd dev's identities.
func (h *harness) identityEnv(identity string) []string {
	return []string{"SPIFFE_ENDPOINT_SOCKET=unix://" + filepath.Join(h.idDir, identity+".sock")}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("harness", flag.ContinueOnError)
	binDir := fs.String("bin", "bin", "directory with meshd, benchserver, benchload and bench.test")
	out := fs.String("out", "bench-result.json", "result file (JSON); the table goes to the same name with .md")
	quick := fs.Bool("quick", false, "about a minute: fewer load points, one short round")
	rounds := fs.Int("rounds", 0, "rounds over all scenarios (default 3, or 1 with -quick)")
	pin := fs.Bool("pin", runtime.NumCPU() >= 2, "pin the client side to CPU 0 and the server side to CPU 1 (taskset)")
	only := fs.String("scenarios", "", "comma-separated scenario names to run (default all)")
	benchtime := fs.String("benchtime", "", "-test.benchtime for the in-process benchmarks (default 500ms, 100ms with -quick)")
	keep := fs.Bool("keep", false, "keep the work directory with logs and configs")
	if err := fs.Parse(args); err != nil {
		return err
	}
	plan := fullPlan()
	if *quick {
		plan = quickPlan()
	}
	if *rounds > 0 {
		plan.Rounds = *rounds
	}
	if *benchtime != "" {
		plan.Benchtime = *benchtime
	}

	h := &harness{binDir: *binDir, byName: map[string]*scenario{}}
	for _, b := range []string{"meshd", "benchserver", "benchload"} {
		if _, err := os.Stat(h.bin(b)); err != nil {
			return fmt.Errorf("%s not built: %w (make bench builds it)", b, err)
		}
	}
	var err error
	if h.haproxy, err = exec.LookPath("haproxy"); err != nil {
		return fmt.Errorf("haproxy is not installed (apt-get install -y haproxy): %w", err)
	}
	if h.dir, err = os.MkdirTemp("", "gridmesh-bench-"); err != nil {
		return err
	}
	if *keep {
		fmt.Fprintln(os.Stderr, "harness: work directory", h.dir)
	} else {
		defer os.RemoveAll(h.dir)
	}
	h.l = &launcher{dir: h.dir, pin: *pin}
	defer h.l.stopAll()
	if h.pki, err = pki.Write(h.dir); err != nil {
		return err
	}

	res := &result{
		Started: time.Now().UTC(),
		Host:    hostInfo(),
		Plan:    plan,
		Pinned:  *pin,
	}
	res.LoadAvg = append(res.LoadAvg, loadAvg("start"))

	// Identities for the mesh scenarios.
	h.idDir = filepath.Join(h.dir, "id")
	ready := filepath.Join(h.dir, "meshd.ready")
	meshd, err := h.l.start("meshd", "control", "server", nil, false,
		h.bin("meshd"), "dev", "-identities", "load,server", "-socket-dir", h.idDir, "-ready-file", ready)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = waitFile(wctx, ready, meshd)
	cancel()
	if err != nil {
		return err
	}

	var want map[string]bool
	if *only != "" {
		want = map[string]bool{}
		for _, n := range strings.Split(*only, ",") {
			want[strings.TrimSpace(n)] = true
		}
	}
	var active []*scenario
	for _, sc := range scenarios() {
		if want != nil && !want[sc.Name] {
			continue
		}
		h.byName[sc.Name] = sc
		res.Scenarios = append(res.Scenarios, &scenarioResult{Name: sc.Name, Description: sc.Description, Missing: sc.Missing})
		if sc.Missing != "" {
			fmt.Fprintf(os.Stderr, "harness: %s missing: %s\n", sc.Name, sc.Missing)
			continue
		}
		if err := sc.setup(ctx, h); err != nil {
			return fmt.Errorf("set up %s: %w", sc.Name, err)
		}
		active = append(active, sc)
	}
	if len(active) == 0 {
		return errors.New("no scenario to run")
	}

	results := map[string]*scenarioResult{}
	for _, sr := range res.Scenarios {
		results[sr.Name] = sr
	}
	start := time.Now()
	for round := range plan.Rounds {
		for i, spec := range plan.Specs {
			// Rotate the order per round and point so no scenario always
			// runs first (or right after the heaviest one).
			order := slices.Clone(active)
			k := (round + i) % len(order)
			order = append(order[k:], order[:k]...)
			for _, sc := range order {
				if err := ctx.Err(); err != nil {
					return err
				}
				m, err := measure(sc, spec)
				if err != nil {
					return fmt.Errorf("%s %s: %w", sc.Name, spec.Name(), err)
				}
				results[sc.Name].add(spec, m)
				fmt.Fprintf(os.Stderr, "round %d %-9s %-11s %8.0f rps  p50 %7.0fµs  p99 %7.0fµs  cpu %6.1fµs/req  err %d\n",
					round+1, sc.Name, spec.Name(), m.RPS, m.P50, m.P99, m.CPUPerReq, m.Errors)
			}
		}
		res.LoadAvg = append(res.LoadAvg, loadAvg(fmt.Sprintf("after round %d", round+1)))
	}
	res.LoadSeconds = time.Since(start).Seconds()
	for _, sc := range active {
		results[sc.Name].Processes = describe(sc.path)
	}
	h.l.stopAll()

	if bt := h.bin("bench.test"); fileExists(bt) {
		fmt.Fprintln(os.Stderr, "harness: in-process allocation benchmarks")
		res.Benchmarks, err = runBenchmarks(ctx, bt, plan.Benchtime)
		if err != nil {
			return err
		}
	} else {
		fmt.Fprintf(os.Stderr, "harness: %s not built (go test -c -o %s ./bench): no allocation figures\n", bt, bt)
	}
	res.LoadAvg = append(res.LoadAvg, loadAvg("end"))
	res.finish()
	return res.write(*out)
}

// measure runs one warm-up and one measured window of spec on sc and sums
// CPU over every process on the path.
func measure(sc *scenario, spec loadgen.Spec) (measurement, error) {
	if err := sc.load.warm(spec); err != nil {
		return measurement{}, err
	}
	others := sc.path[1:]
	before, err := cpuOf(others)
	if err != nil {
		return measurement{}, err
	}
	r, err := sc.load.run(spec)
	if err != nil {
		return measurement{}, err
	}
	after, err := cpuOf(others)
	if err != nil {
		return measurement{}, err
	}
	cpu, client := r.CPUSeconds, r.CPUSeconds
	by := map[string]float64{sc.load.name: r.CPUSeconds}
	for i, p := range others {
		d := (after[i] - before[i]).Seconds()
		cpu += d
		by[p.name] = d
		if p.side == "client" {
			client += d
		}
	}
	m := measurement{Result: r.Result, CPUSeconds: cpu}
	if n := float64(r.Requests); n > 0 {
		m.CPUPerReq = cpu / n * 1e6
		m.ClientCPUPerReq = client / n * 1e6
		m.CPUByProcess = map[string]float64{}
		for k, v := range by {
			m.CPUByProcess[k] = v / n * 1e6
		}
	}
	m.RSS, err = rssOf(sc.path)
	return m, err
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// plan is what one run measures.
type plan struct {
	Rounds    int            `json:"rounds"`
	Specs     []loadgen.Spec `json:"specs"`
	Benchtime string         `json:"benchtime"`
}

func fullPlan() plan {
	p := plan{Rounds: 3, Benchtime: "500ms"}
	for _, size := range []int{100, 1024} {
		for _, c := range []int{1, 8, 64} {
			p.Specs = append(p.Specs, loadgen.Spec{Concurrency: c, Payload: size, Duration: 1500 * time.Millisecond, Warmup: 300 * time.Millisecond})
		}
		p.Specs = append(p.Specs,
			loadgen.Spec{Rate: 1000, Payload: size, Duration: 3 * time.Second, Warmup: 300 * time.Millisecond},
			loadgen.Spec{Rate: 5000, Payload: size, Duration: 2 * time.Second, Warmup: 300 * time.Millisecond})
	}
	return p
}

func quickPlan() plan {
	w := 200 * time.Millisecond
	return plan{Rounds: 1, Benchtime: "100ms", Specs: []loadgen.Spec{
		{Concurrency: 1, Payload: 100, Duration: time.Second, Warmup: w},
		{Concurrency: 64, Payload: 100, Duration: time.Second, Warmup: w},
		{Concurrency: 8, Payload: 1024, Duration: time.Second, Warmup: w},
		{Rate: 1000, Payload: 100, Duration: 2 * time.Second, Warmup: w},
	}}
}
