package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gridmesh/gridmesh/bench/internal/loadgen"
	"github.com/gridmesh/gridmesh/bench/internal/proc"
)

// measurement is one measured window of one scenario.
type measurement struct {
	loadgen.Result
	// CPUSeconds is user+system time summed over every process on the path.
	CPUSeconds float64 `json:"cpu_seconds"`
	CPUPerReq  float64 `json:"cpu_us_per_req"`
	// RSS is VmRSS summed over the path's processes after the window.
	RSS int64 `json:"rss_bytes"`
	// ClientCPUPerReq is the part of CPUPerReq spent on the client side:
	// the load generator (the mesh client lives in it) and the client-side
	// proxy.
	ClientCPUPerReq float64 `json:"client_cpu_us_per_req"`
	// CPUByProcess splits CPUPerReq by process.
	CPUByProcess map[string]float64 `json:"cpu_us_per_req_by_process,omitempty"`
}

type point struct {
	Spec   loadgen.Spec  `json:"spec"`
	Rounds []measurement `json:"rounds"`
	// Median is the per-field median over rounds.
	Median measurement `json:"median"`
}

type scenarioResult struct {
	Name        string            `json:"name"`
	Description string            `json:"description"`
	Missing     string            `json:"missing,omitempty"`
	Points      map[string]*point `json:"points,omitempty"`
	Processes   []processInfo     `json:"processes,omitempty"`
	Summary     *summary          `json:"summary,omitempty"`
	order       []string
}

// summary holds the headline figures of a scenario.
type summary struct {
	// Latency at the fixed rate of 1,000 calls/s, 100 B.
	P50, P90, P99, P999 float64
	// MaxRPS is the best closed-loop throughput (100 B).
	MaxRPS float64 `json:"max_rps"`
	// CPUPerReq at 1,000 calls/s and at the maximum throughput point.
	CPUPerReqFixed float64 `json:"cpu_us_per_req_r1000"`
	CPUPerReqMax   float64 `json:"cpu_us_per_req_max"`
	// RSSMB is the path's VmRSS sum after the 64-in-flight 100 B window
	// (median over rounds): steady state under load. The largest sum seen
	// at any point is MaxRSSMB; open-loop backlogs on a busy machine can
	// inflate it.
	RSSMB    float64 `json:"rss_mb"`
	MaxRSSMB float64 `json:"max_rss_mb"`
	// P50Serial is the p50 latency with one call in flight (100 B): the
	// latency a call path adds, with no queueing.
	P50Serial float64 `json:"p50_us_c1"`
	// ClientCPUPerReqMax is the client side's share of CPUPerReqMax.
	ClientCPUPerReqMax float64 `json:"client_cpu_us_per_req_max"`
}

type processInfo struct {
	Name     string  `json:"name"`
	Role     string  `json:"role"`
	RSSMB    float64 `json:"rss_mb"`
	PeakRSSM float64 `json:"peak_rss_mb"`
}

type benchmark struct {
	Name    string             `json:"name"`
	N       int64              `json:"n"`
	Metrics map[string]float64 `json:"metrics"`
}

type result struct {
	Started     time.Time         `json:"started"`
	Host        map[string]string `json:"host"`
	Pinned      bool              `json:"pinned"`
	Plan        plan              `json:"plan"`
	LoadAvg     []string          `json:"loadavg"`
	LoadSeconds float64           `json:"load_seconds"`
	Scenarios   []*scenarioResult `json:"scenarios"`
	Benchmarks  []benchmark       `json:"benchmarks,omitempty"`
	Ratios      []ratio           `json:"ratios"`
	Targets     []target          `json:"targets"`
	// Issue17 are issue 17's targets (telemetry at mesh speed, gRPC and
	// HTTP); Targets are issue 9's.
	Issue17 []target `json:"issue17_targets,omitempty"`
}

func (s *scenarioResult) add(spec loadgen.Spec, m measurement) {
	if s.Points == nil {
		s.Points = map[string]*point{}
	}
	p := s.Points[spec.Name()]
	if p == nil {
		p = &point{Spec: spec}
		s.Points[spec.Name()] = p
		s.order = append(s.order, spec.Name())
	}
	p.Rounds = append(p.Rounds, m)
}

func median(ms []measurement, f func(measurement) float64) float64 {
	v := make([]float64, len(ms))
	for i, m := range ms {
		v[i] = f(m)
	}
	slices.Sort(v)
	if len(v) == 0 {
		return 0
	}
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func (s *scenarioResult) finish() {
	if len(s.Points) == 0 {
		return
	}
	sum := &summary{}
	var maxRSS int64
	for _, p := range s.Points {
		rs := p.Rounds
		p.Median = measurement{
			Result: loadgen.Result{
				Requests: int64(median(rs, func(m measurement) float64 { return float64(m.Requests) })),
				Errors:   int64(median(rs, func(m measurement) float64 { return float64(m.Errors) })),
				Seconds:  median(rs, func(m measurement) float64 { return m.Seconds }),
				RPS:      median(rs, func(m measurement) float64 { return m.RPS }),
				P50:      median(rs, func(m measurement) float64 { return m.P50 }),
				P90:      median(rs, func(m measurement) float64 { return m.P90 }),
				P99:      median(rs, func(m measurement) float64 { return m.P99 }),
				P999:     median(rs, func(m measurement) float64 { return m.P999 }),
				Max:      median(rs, func(m measurement) float64 { return m.Max }),
				Late:     int64(median(rs, func(m measurement) float64 { return float64(m.Late) })),
			},
			CPUSeconds:      median(rs, func(m measurement) float64 { return m.CPUSeconds }),
			CPUPerReq:       median(rs, func(m measurement) float64 { return m.CPUPerReq }),
			RSS:             int64(median(rs, func(m measurement) float64 { return float64(m.RSS) })),
			ClientCPUPerReq: median(rs, func(m measurement) float64 { return m.ClientCPUPerReq }),
		}
		for _, m := range rs {
			maxRSS = max(maxRSS, m.RSS)
		}
		if p.Spec.Concurrency > 0 && p.Spec.Payload == 100 && p.Median.RPS > sum.MaxRPS {
			sum.MaxRPS = p.Median.RPS
			sum.CPUPerReqMax = p.Median.CPUPerReq
			sum.ClientCPUPerReqMax = p.Median.ClientCPUPerReq
		}
	}
	if p := s.Points["c1/100B"]; p != nil {
		sum.P50Serial = p.Median.P50
	}
	if p := s.Points["r1000/100B"]; p != nil {
		m := p.Median
		sum.P50, sum.P90, sum.P99, sum.P999, sum.CPUPerReqFixed = m.P50, m.P90, m.P99, m.P999, m.CPUPerReq
	}
	sum.MaxRSSMB = float64(maxRSS) / (1 << 20)
	if p := s.Points["c64/100B"]; p != nil {
		sum.RSSMB = float64(p.Median.RSS) / (1 << 20)
	}
	s.Summary = sum
}

// ratio compares two scenarios' headline figures (num/den).
type ratio struct {
	Name     string  `json:"name"`
	P50      float64 `json:"p50"`
	P99      float64 `json:"p99"`
	MaxRPS   float64 `json:"max_rps"`
	CPUFixed float64 `json:"cpu_per_req_r1000"`
	CPUMax   float64 `json:"cpu_per_req_max"`
	RSS      float64 `json:"rss"`
}

// target is one of issue 9's goals, evaluated.
type target struct {
	Goal  string `json:"goal"`
	Value string `json:"value"`
	Met   bool   `json:"met"`
}

func (r *result) finish() {
	by := map[string]*summary{}
	for _, s := range r.Scenarios {
		s.finish()
		if s.Summary != nil {
			by[s.Name] = s.Summary
		}
	}
	a, b := by["a-plain"], by["b-tls"]
	for _, c := range []string{"c-mtls", "c-bal", "c-nootel", "c-full", "c-full-1pct"} {
		if by[c] == nil {
			continue
		}
		if b != nil {
			r.Ratios = append(r.Ratios, ratioOf(c+" / b-tls", by[c], b))
		}
		if a != nil {
			r.Ratios = append(r.Ratios, ratioOf(c+" / a-plain", by[c], a))
		}
	}
	if b3 := by["b-tls-3"]; b3 != nil {
		for _, c := range []string{"c-bal", "c-nootel", "c-full", "c-full-1pct"} {
			if by[c] != nil {
				r.Ratios = append(r.Ratios, ratioOf(c+" / b-tls-3", by[c], b3))
			}
		}
	}
	for _, d := range []string{"d-sidecar", "d-l4"} {
		if by[d] != nil && b != nil {
			r.Ratios = append(r.Ratios, ratioOf(d+" / b-tls", by[d], b))
		}
	}
	if hb := by["h-b-tls"]; hb != nil {
		for _, c := range []string{"h-c-nootel", "h-c-full", "h-c-full-1pct", "h-d-sidecar"} {
			if by[c] != nil {
				r.Ratios = append(r.Ratios, ratioOf(c+" / h-b-tls", by[c], hb))
			}
		}
	}
	r.Issue17 = issue17Targets(by)
	// Targets, for the most complete mesh variant that ran, and for each
	// variant so the cost can be split by component.
	for _, c := range []string{"c-full", "c-full-1pct", "c-nootel", "c-bal", "c-mtls"} {
		cs := by[c]
		if cs == nil || b == nil {
			continue
		}
		r.Targets = append(r.Targets,
			target{c + " vs b: p50 at 1,000/s within +15%", pct(cs.P50, b.P50), cs.P50 <= 1.15*b.P50},
			target{c + " vs b: p99 at 1,000/s within +20%", pct(cs.P99, b.P99), cs.P99 <= 1.20*b.P99},
			target{c + " vs b: CPU per request at 1,000/s within +25%", pct(cs.CPUPerReqFixed, b.CPUPerReqFixed), cs.CPUPerReqFixed <= 1.25*b.CPUPerReqFixed},
			target{c + " vs b: max throughput at least 80%", fmt.Sprintf("%.0f%%", 100*cs.MaxRPS/b.MaxRPS), cs.MaxRPS >= 0.8*b.MaxRPS},
		)
		if a == nil {
			continue
		}
		for _, d := range []string{"d-sidecar", "d-l4"} {
			ds := by[d]
			// The L4 variant is compared with the full mesh only, to keep
			// the table short; the JSON ratios have the rest.
			if ds == nil || (d == "d-l4" && c != "c-full") {
				continue
			}
			meshAdds, sideAdds := cs.P50-b.P50, ds.P50-a.P50
			r.Targets = append(r.Targets,
				target{fmt.Sprintf("%s vs %s: p50 the mesh adds over b at least 5x smaller than what the sidecar adds over a", c, d),
					adds(meshAdds, sideAdds), meshAdds*5 <= sideAdds},
				target{fmt.Sprintf("%s vs %s: max throughput at least 2x", c, d),
					fmt.Sprintf("%.2fx", cs.MaxRPS/ds.MaxRPS), cs.MaxRPS >= 2*ds.MaxRPS},
				target{fmt.Sprintf("%s vs %s: CPU per request (at 1,000/s) at least 2x lower", c, d),
					fmt.Sprintf("%.2fx", ds.CPUPerReqFixed/cs.CPUPerReqFixed), 2*cs.CPUPerReqFixed <= ds.CPUPerReqFixed},
			)
		}
	}
}

// adds describes the p50 latency the mesh and the sidecar add over their
// baselines; noise can make either negative.
func adds(mesh, sidecar float64) string {
	s := fmt.Sprintf("mesh %+.0fµs, sidecar %+.0fµs", mesh, sidecar)
	if mesh > 0 && sidecar > 0 {
		s += fmt.Sprintf(" (%.1fx)", sidecar/mesh)
	}
	return s
}

func pct(x, base float64) string { return fmt.Sprintf("%+.0f%%", 100*(x/base-1)) }

func ratioOf(name string, x, y *summary) ratio {
	div := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	return ratio{Name: name, P50: div(x.P50, y.P50), P99: div(x.P99, y.P99), MaxRPS: div(x.MaxRPS, y.MaxRPS),
		CPUFixed: div(x.CPUPerReqFixed, y.CPUPerReqFixed), CPUMax: div(x.CPUPerReqMax, y.CPUPerReqMax), RSS: div(x.RSSMB, y.RSSMB)}
}

func (r *result) write(out string) error {
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(out, js, 0o644); err != nil {
		return err
	}
	table := r.table()
	md := strings.TrimSuffix(out, ".json") + ".md"
	if err := os.WriteFile(md, []byte(table), 0o644); err != nil {
		return err
	}
	fmt.Print(table)
	fmt.Printf("\nwrote %s and %s\n", out, md)
	return nil
}

func (r *result) table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# gridmesh bench, %s\n\n", r.Started.Format(time.RFC3339))
	fmt.Fprintf(&b, "host: %s, %s CPUs, %s; pinned: %v; rounds: %d; loadavg: %s\n\n",
		r.Host["kernel"], r.Host["cpus"], r.Host["go"], r.Pinned, r.Plan.Rounds, strings.Join(r.LoadAvg, "; "))
	b.WriteString("Latency at a fixed 1,000 calls/s (100 B, open loop, from intended send time); max throughput is the best closed-loop point (100 B); CPU is µs per request summed over every process on the path; \"client\" is the part of it on the client side (load generator with the mesh client in it, client-side proxy); RSS sums VmRSS over the path's processes, load generator included, after the 64-in-flight 100 B window. Medians over rounds.\n\n")
	b.WriteString("| scenario | p50 µs | p90 µs | p99 µs | p99.9 µs | p50 µs 1 in flight | max rps | CPU µs/req @1k/s | CPU µs/req @max (client) | RSS MB |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range r.Scenarios {
		if s.Summary == nil {
			fmt.Fprintf(&b, "| %s | missing: %s ||||||||| \n", s.Name, s.Missing)
			continue
		}
		m := s.Summary
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.1f | %.1f (%.1f) | %.1f |\n",
			s.Name, m.P50, m.P90, m.P99, m.P999, m.P50Serial, m.MaxRPS, m.CPUPerReqFixed, m.CPUPerReqMax, m.ClientCPUPerReqMax, m.RSSMB)
	}
	b.WriteString("\n| ratio | p50 | p99 | max rps | CPU/req @1k/s | CPU/req @max | RSS |\n|---|---:|---:|---:|---:|---:|---:|\n")
	for _, x := range r.Ratios {
		fmt.Fprintf(&b, "| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", x.Name, x.P50, x.P99, x.MaxRPS, x.CPUFixed, x.CPUMax, x.RSS)
	}
	writeTargets(&b, "issue 9", r.Targets)
	if len(r.Issue17) > 0 {
		writeTargets(&b, "issue 17", r.Issue17)
	}
	b.WriteString("\nAll points (medians over rounds):\n\n| scenario | point | rps | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | CPU µs/req | errors | late |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range r.Scenarios {
		for _, name := range s.order {
			m := s.Points[name].Median
			fmt.Fprintf(&b, "| %s | %s | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.1f | %d | %d |\n",
				s.Name, name, m.RPS, m.P50, m.P90, m.P99, m.P999, m.Max, m.CPUPerReq, m.Errors, m.Late)
		}
	}
	if len(r.Benchmarks) > 0 {
		b.WriteString("\nIn-process benchmarks (testing.B; BenchmarkUnary* is client and server in one process, so the figures cover both sides of a call; cpu-ns/op is process CPU time per call, steadier than ns/op on a busy machine):\n\n| benchmark | ns/op | cpu-ns/op | B/op | allocs/op |\n|---|---:|---:|---:|---:|\n")
		for _, x := range r.Benchmarks {
			cpu := "–"
			if v, ok := x.Metrics["cpu-ns/op"]; ok {
				cpu = fmt.Sprintf("%.0f", v)
			}
			fmt.Fprintf(&b, "| %s | %.0f | %s | %.0f | %.0f |\n", x.Name, x.Metrics["ns/op"], cpu, x.Metrics["B/op"], x.Metrics["allocs/op"])
		}
	}
	return b.String()
}

// writeTargets writes a table of targets, each met or not.
func writeTargets(b *strings.Builder, issue string, ts []target) {
	fmt.Fprintf(b, "\n| target (%s) | value | met |\n|---|---|---|\n", issue)
	for _, t := range ts {
		met := "no"
		if t.Met {
			met = "yes"
		}
		fmt.Fprintf(b, "| %s | %s | %s |\n", t.Goal, t.Value, met)
	}
}

func cpuOf(ps []*process) ([]time.Duration, error) {
	out := make([]time.Duration, len(ps))
	for i, p := range ps {
		c, err := proc.CPU(p.pid())
		if err != nil {
			return nil, fmt.Errorf("%s: %w%s", p.name, err, p.tail())
		}
		out[i] = c
	}
	return out, nil
}

func rssOf(ps []*process) (int64, error) {
	var sum int64
	for _, p := range ps {
		r, err := proc.RSS(p.pid())
		if err != nil {
			return 0, fmt.Errorf("%s: %w", p.name, err)
		}
		sum += r
	}
	return sum, nil
}

func describe(ps []*process) []processInfo {
	var out []processInfo
	for _, p := range ps {
		rss, _ := proc.RSS(p.pid())
		peak, _ := proc.PeakRSS(p.pid())
		out = append(out, processInfo{Name: p.name, Role: p.role, RSSMB: float64(rss) / (1 << 20), PeakRSSM: float64(peak) / (1 << 20)})
	}
	return out
}

func loadAvg(when string) string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return when + ": ?"
	}
	f := strings.Fields(string(b))
	return fmt.Sprintf("%s %s", when, strings.Join(f[:min(3, len(f))], " "))
}

func hostInfo() map[string]string {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	return map[string]string{
		"kernel": "linux " + strings.TrimSpace(string(kernel)),
		"cpus":   strconv.Itoa(runtime.NumCPU()),
		"cpu":    model,
		"go":     runtime.Version(),
	}
}

// runBenchmarks runs the compiled bench test binary's benchmarks and parses
// the standard output format.
func runBenchmarks(ctx context.Context, bin, benchtime string) ([]benchmark, error) {
	cmd := exec.CommandContext(ctx, bin, "-test.run", "^$", "-test.bench", ".", "-test.benchmem", "-test.benchtime", benchtime)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s: %w\n%s%s", bin, err, out, stderr.String())
	}
	return parseBenchmarks(out), nil
}

// parseBenchmarks reads the standard `go test -bench` result lines.
func parseBenchmarks(out []byte) []benchmark {
	var bs []benchmark
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		x := benchmark{Name: f[0], N: n, Metrics: map[string]float64{}}
		for i := 2; i+1 < len(f); i += 2 {
			if v, err := strconv.ParseFloat(f[i], 64); err == nil {
				x.Metrics[f[i+1]] = v
			}
		}
		bs = append(bs, x)
	}
	return bs
}
