// Command recdemo runs the REC trading platform as separate processes on
// loopback and a scripted trading session against it: `meshd dev` serving
// identities that rotate every few seconds, registry, accounts, two
// trading instances, settlement and the gateway. It places a few orders by
// hand, then runs load while one trading instance is killed (SIGKILL) and
// restarted, audits the result and prints a summary. It stops every process
// it started and exits non-zero if an invariant failed.
//
// With -consul (make demo CONSUL=1) a real Consul agent replaces meshd dev:
// it is the catalog (servers register with a health check, clients dial
// consul:///<service>), the identity provider (every SVID from its Connect
// CA, which the demo rotates during the load) and the intention store (the
// authorization matrix as L7 intentions).
//
//	go build -o bin/ ./cmd/meshd ./examples/rec/cmd/...
//	bin/recdemo -bin bin
//	bin/recdemo -bin bin -consul "$(bash tools/consul/build.sh)/consul"
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gridmesh/gridmesh/examples/rec/gateway"
	"github.com/gridmesh/gridmesh/examples/rec/load"
	"github.com/gridmesh/gridmesh/examples/rec/platform"
	"github.com/gridmesh/gridmesh/examples/rec/policy"
	"github.com/gridmesh/gridmesh/examples/rec/recpb"
	"github.com/gridmesh/gridmesh/security"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "recdemo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	bin := flag.String("bin", "bin", "directory holding meshd and the REC binaries")
	dir := flag.String("dir", "", "working directory for sockets, databases and logs (default: a new temporary directory)")
	keep := flag.Bool("keep", false, "keep the working directory (logs, databases) afterwards")
	orders := flag.Int("orders", 600, "orders in the load phase")
	concurrency := flag.Int("concurrency", 8, "concurrent participants in the load phase")
	svidTTL := flag.Duration("svid-ttl", 6*time.Second, "SVID lifetime: they rotate at half of it")
	instances := flag.Int("trading", 2, "trading instances")
	hold := flag.Bool("hold", false, "keep the platform running after the summary, until interrupted")
	traces := flag.String("traces", "", "trace exporter for every service: otlp (OTEL_EXPORTER_OTLP_ENDPOINT, default localhost:4317), console (spans in each service's log), or none")
	socket := flag.String("spiffe-socket", "", "use this SPIFFE Workload API (a SPIRE agent, e.g. unix:///tmp/gridmesh-spire/agent.sock) for every workload instead of meshd dev's; see tools/spire/up.sh")
	xds := flag.Bool("xds", false, "run on meshd's xDS: servers register with meshd, clients dial xds:///<service>, mTLS and RBAC come from meshd")
	consulBin := flag.String("consul", "", "run on a real Consul agent started from this consul binary (v1.14.11, see tools/consul/build.sh): catalog, Connect CA identities and intentions from Consul; -xds, -spiffe-socket and -svid-ttl do not apply")
	flag.Parse()
	if *consulBin != "" && (*xds || *socket != "") {
		return errors.New("-consul runs the platform on Consul, which replaces meshd's xDS (-xds) and the Workload API (-spiffe-socket): drop those flags")
	}

	if *dir == "" {
		d, err := os.MkdirTemp("", "recdemo-")
		if err != nil {
			return err
		}
		*dir = d
		if !*keep {
			defer os.RemoveAll(d)
		}
	}
	out := os.Stdout
	sigCtx := ctx
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()

	if *consulBin != "" {
		fmt.Fprintf(out, "== starting a Consul agent and the platform in %s\n", *dir)
	} else {
		fmt.Fprintf(out, "== starting meshd dev and the platform in %s\n", *dir)
	}
	p, err := platform.Start(ctx, platform.Config{Bin: *bin, Dir: *dir, Trading: *instances, SVIDTTL: *svidTTL, Metrics: true, XDS: *xds, Socket: *socket, ConsulBin: *consulBin, Env: traceEnv(*traces)})
	if err != nil {
		return err
	}
	defer p.Stop()
	if *consulBin != "" {
		fmt.Fprintf(out, "   %-11s agent on %s (ACLs on, default deny; a token per workload): catalog, Connect CA, intentions\n", "Consul", p.ConsulAddr())
	} else if *socket != "" {
		fmt.Fprintf(out, "   %-11s every workload's SVID from %s; meshd dev serves xDS and registration on %s\n", "SPIRE", *socket, p.Proc("meshd").Addr)
	} else {
		fmt.Fprintf(out, "   %-11s Workload API sockets in %s, one per workload; xDS and registration API on %s over mTLS (meshd presents spiffe://<trust-domain>/meshd and takes only workload SVIDs)\n", "meshd dev", *dir, p.Proc("meshd").Addr)
	}
	fmt.Fprintf(out, "   %-11s %-22s %-22s %s\n", "", "serves", "admin", "metrics")
	names := []string{"registry", "accounts"}
	for i := 1; i <= *instances; i++ {
		names = append(names, fmt.Sprintf("trading-%d", i))
	}
	for _, n := range append(names, "settlement", "gateway") {
		pr := p.Proc(n)
		fmt.Fprintf(out, "   %-11s %-22s %-22s %s\n", n, pr.Addr, pr.Admin, pr.Metrics)
	}
	fmt.Fprintf(out, "   the gateway serves its HTTP JSON API at %s with mesh mTLS: only the portal workload may trade\n", p.GatewayURL)
	if *consulBin != "" {
		if err := printConsul(ctx, out, p); err != nil {
			return err
		}
	} else if *socket == "" {
		fmt.Fprintf(out, "   SVIDs live %v and rotate every %v\n", *svidTTL, *svidTTL/2)
	}

	op, err := p.Operator(ctx, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	defer op.Close()
	rotations := op.WatchRotations(ctx)
	portal, err := p.Client(ctx, policy.Portal, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	defer portal.Close()
	hc := portal.HTTP

	seed := platform.NewSeed(20, 10_000_000, 500) // $100,000 and 500 MWh per market each
	if err := seed.Apply(ctx, op); err != nil {
		return err
	}
	fmt.Fprintf(out, "== seeded %d participants with $%d each and %d MWh in each of %d markets\n",
		len(seed.Participants), seed.DepositCents/100, seed.LotMWh, len(seed.Markets))

	// A few orders by hand.
	fmt.Fprintln(out, "== a few orders through the gateway")
	var acks []platform.Ack
	for _, o := range []gateway.OrderRequest{
		{Participant: "p01", EnergySource: "solar", Vintage: 2024, Side: "sell", PriceCents: 1500, MWh: 10},
		{Participant: "p02", EnergySource: "solar", Vintage: 2024, Side: "sell", PriceCents: 1450, MWh: 5},
		{Participant: "p03", EnergySource: "solar", Vintage: 2024, Side: "buy", PriceCents: 1520, MWh: 8},
		{Participant: "p04", EnergySource: "wind", Vintage: 2024, Side: "buy", PriceCents: 1200, MWh: 3},
		{Participant: "p05", EnergySource: "wind", Vintage: 2024, Side: "sell", PriceCents: 1300, MWh: 3},
		{Participant: "p06", EnergySource: "hydro", Vintage: 2023, Side: "buy", PriceCents: 100_000_000, MWh: 1000},
	} {
		ack, line, err := placeByHand(ctx, hc, p.GatewayURL, o)
		if err != nil {
			return err
		}
		acks = append(acks, ack)
		fmt.Fprintln(out, "   "+line)
	}
	if b, err := get(ctx, hc, p.GatewayURL+"/v1/markets/solar/2024/book"); err == nil {
		fmt.Fprintf(out, "   GET /v1/markets/solar/2024/book → %s\n", b)
	}
	if b, err := post(ctx, hc, p.GatewayURL+"/v1/participants/p03/retirements", `{"energy_source":"solar","vintage":2024,"mwh":2}`); err == nil {
		fmt.Fprintf(out, "   POST /v1/participants/p03/retirements {solar:2024, 2 MWh} → %s\n", b)
	}
	if _, _, err := platform.WaitSettled(ctx, op); err != nil {
		return err
	}
	if b, err := get(ctx, hc, p.GatewayURL+"/v1/participants/p03/holdings"); err == nil {
		var h struct {
			Holdings []struct {
				Market struct {
					Source  string `json:"energy_source"`
					Vintage int    `json:"vintage"`
				} `json:"market"`
				MWh     string `json:"mwh"`
				Retired string `json:"retired_mwh"`
			} `json:"holdings"`
		}
		json.Unmarshal([]byte(b), &h)
		for _, x := range h.Holdings {
			if x.Market.Source == "solar" && x.Market.Vintage == 2024 {
				fmt.Fprintf(out, "   GET /v1/participants/p03/holdings → solar:2024: %s MWh owned, %s retired (500 seeded + 8 bought, settled)\n", x.MWh, x.Retired)
			}
		}
	}

	// Load, with a trading instance killed and restarted in the middle.
	fmt.Fprintf(out, "== load: %d orders from %d concurrent participants; trading-1 gets SIGKILL part-way and restarts\n", *orders, *concurrency)
	var (
		wg       sync.WaitGroup
		killErr  error
		events   []string
		rotation func() (time.Duration, error)
	)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	resc := make(chan *load.Result, 1)
	var progress io.Writer
	if isTerminal(out) {
		progress = out
	}
	go func() {
		r, _ := load.Run(loadCtx, load.Config{URL: p.GatewayURL, Client: hc, Orders: *orders, Concurrency: *concurrency,
			Participants: seed.Participants, Markets: seed.Markets, CancelShare: 0.1, Progress: progress})
		resc <- r
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		start := time.Now()
		wait := func(d time.Duration) {
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
		}
		if *consulBin != "" {
			// Rotate the Connect CA while the load runs: every process
			// has its leaf re-signed by the new root, both roots trusted.
			root, err := p.RotateConsulCA(ctx)
			if err != nil {
				killErr = err
				return
			}
			rotation = watchConsulRotation(ctx, p, op, time.Now())
			events = append(events, fmt.Sprintf("%5.1fs  Connect CA rotated through /v1/connect/ca/configuration: new root %s", time.Since(start).Seconds(), root[:23]))
		}
		// Kill once a third of the load is in, so orders are in flight.
		base, err := op.Trading.Stats(ctx, &recpb.TradingStatsRequest{})
		if err != nil {
			killErr = err
			return
		}
		for {
			st, err := op.Trading.Stats(ctx, &recpb.TradingStatsRequest{})
			if err == nil && st.GetOrdersAccepted()+st.GetOrdersRejected()-base.GetOrdersAccepted()-base.GetOrdersRejected() >= int64(*orders/3) {
				break
			}
			if ctx.Err() != nil {
				killErr = ctx.Err()
				return
			}
			wait(20 * time.Millisecond)
		}
		if killErr = p.Kill("trading-1"); killErr != nil {
			return
		}
		events = append(events, fmt.Sprintf("%5.1fs  trading-1 killed (SIGKILL) after %d orders", time.Since(start).Seconds(), *orders/3))
		if *consulBin != "" {
			// Its TTL health check lapses and Consul stops listing it.
			if killErr = waitTrading(ctx, p, 1); killErr != nil {
				return
			}
			events = append(events, fmt.Sprintf("%5.1fs  trading-1's health check critical: Consul lists one trading instance", time.Since(start).Seconds()))
		} else {
			wait(2 * time.Second)
		}
		if killErr = p.Restart(ctx, "trading-1"); killErr != nil {
			return
		}
		events = append(events, fmt.Sprintf("%5.1fs  trading-1 restarted and serving", time.Since(start).Seconds()))
		if *consulBin != "" {
			if killErr = waitTrading(ctx, p, 2); killErr != nil {
				return
			}
			events = append(events, fmt.Sprintf("%5.1fs  trading-1 registered again, check passing: Consul lists two trading instances", time.Since(start).Seconds()))
		}
	}()
	res := <-resc
	wg.Wait()
	if killErr != nil {
		return killErr
	}
	for _, e := range events {
		fmt.Fprintln(out, "   "+e)
	}

	fmt.Fprint(out, indent(res.Summary()))
	if m, err := p.GatewayMesh(ctx, op); err == nil {
		fmt.Fprintf(out, "   mesh:       the gateway's client made %s\n", m)
	}

	// Audit.
	fmt.Fprintln(out, "== audit")
	actx, acancel := context.WithTimeout(ctx, time.Minute)
	defer acancel()
	report, err := platform.Audit(actx, op, seed, append(acks, res.Acks...), res.Unknown)
	if err != nil {
		return err
	}
	pairs, err := p.SweepAuthz(actx)
	if err != nil {
		return err
	}
	report.Checks = append(report.Checks, platform.AuthzCheck(pairs))
	if crashed := p.Exited(); len(crashed) > 0 {
		report.Checks = append(report.Checks, platform.Check{Name: "no process crashed", Detail: strings.Join(crashed, "; ")})
	}
	report.Print(indentWriter{out})
	if *consulBin != "" {
		after, err := rotation()
		if err != nil {
			return err
		}
		svid, err := op.Node.Src.GetX509SVID()
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "   identity: every SVID from Consul's Connect CA (%s); the operator's leaf signed by the new root %v after the rotation, both roots trusted meanwhile\n",
			svid.ID.TrustDomain(), after.Round(time.Millisecond))
	} else {
		fmt.Fprintf(out, "   identity: the operator's SVID rotated %d times during the run\n", rotations())
	}

	fmt.Fprintln(out, "== where to look")
	if *keep {
		fmt.Fprintf(out, "   logs and databases: %s\n", *dir)
	} else {
		fmt.Fprintf(out, "   logs and databases: %s (removed on exit; pass -keep to keep them)\n", *dir)
	}
	fmt.Fprintf(out, "   admin endpoints (while the demo runs; -hold keeps it up): curl http://%s/status, /identity, /targets, /config, /denials, /events\n", p.Proc("gateway").Admin)
	fmt.Fprintf(out, "   metrics: curl http://%s/metrics (each service has its own, listed above)\n", p.Proc("gateway").Metrics)
	switch *traces {
	case "", "none":
		fmt.Fprintln(out, "   traces: pass -traces otlp (a collector or Jaeger at OTEL_EXPORTER_OTLP_ENDPOINT, default localhost:4317) or -traces console; the services pass W3C trace context")
	case "console":
		fmt.Fprintf(out, "   traces: as JSON spans in each service's log in %s (with -keep); log lines carry trace_id\n", *dir)
	default:
		fmt.Fprintf(out, "   traces: exported with OTEL_TRACES_EXPORTER=%s\n", *traces)
	}
	if *consulBin != "" {
		fmt.Fprintf(out, "   the API needs an SVID: %s bin/recload -url %s\n", strings.Join(p.ConsulEnv(policy.Portal), " "), p.GatewayURL)
		fmt.Fprintf(out, "   Consul: curl -H 'X-Consul-Token: %s' http://%s/v1/config/service-intentions/trading\n", p.ConsulManagementToken(), p.ConsulAddr())
	} else {
		fmt.Fprintf(out, "   the API needs an SVID: SPIFFE_ENDPOINT_SOCKET=%s bin/recload -url %s\n", p.Socket(policy.Portal), p.GatewayURL)
	}

	if !report.OK() || res.Invalid > 0 || res.Unknown > 0 {
		return errors.New("an invariant failed: see the checks above")
	}
	fmt.Fprintln(out, "== all invariants hold")
	if *hold {
		fmt.Fprintln(out, "== holding the platform up; interrupt to stop")
		<-sigCtx.Done()
	}
	return nil
}

// printConsul shows what the platform put in Consul: the catalog, with
// each instance's health, and the intentions, with the operator's SVID.
func printConsul(ctx context.Context, out io.Writer, p *platform.Platform) error {
	for _, svc := range []string{policy.Registry, policy.Accounts, policy.Trading, policy.Settlement} {
		list, err := p.ConsulInstances(ctx, svc)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "   %-11s registered in Consul, health check passing: %s\n", svc, strings.Join(list, ", "))
	}
	fmt.Fprintf(out, "   %-11s the matrix as L7 intentions (service-intentions entries, one permission per method or route)\n", "intentions")
	return nil
}

// watchConsulRotation follows, from a CA rotation at rotatedAt, the
// operator's leaf until it is signed by the new root (at once, or within
// 30s when Consul's agent spreads the re-signing), for up to 40s. The
// returned func waits for that and says how long after the rotation it
// was.
func watchConsulRotation(ctx context.Context, p *platform.Platform, op *platform.Operator, rotatedAt time.Time) func() (time.Duration, error) {
	src := op.Node.Src.(interface {
		security.Source
		Changed() <-chan struct{}
	})
	type result struct {
		after time.Duration
		err   error
	}
	done := make(chan result, 1)
	go func() {
		for {
			changed := src.Changed()
			svid, err := src.GetX509SVID()
			if err != nil {
				done <- result{err: err}
				return
			}
			onNew, err := p.SignedByActiveConsulRoot(ctx, svid.Certificates[0])
			if err != nil {
				done <- result{err: err}
				return
			}
			if onNew {
				done <- result{after: time.Since(rotatedAt)}
				return
			}
			if time.Since(rotatedAt) > 40*time.Second {
				done <- result{err: errors.New("the operator's leaf is still signed by the old Connect CA root 40s after the rotation")}
				return
			}
			select {
			case <-ctx.Done():
				done <- result{err: ctx.Err()}
				return
			case <-changed:
			case <-time.After(time.Second):
			}
		}
	}()
	return func() (time.Duration, error) {
		r := <-done
		return r.after, r.err
	}
}

// waitTrading waits until Consul lists n passing trading instances.
func waitTrading(ctx context.Context, p *platform.Platform, n int) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		list, err := p.ConsulInstances(ctx, policy.Trading)
		if err == nil && len(list) == n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("Consul lists %d passing trading instances (%v) 30s on, want %d", len(list), err, n)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func placeByHand(ctx context.Context, hc *http.Client, url string, o gateway.OrderRequest) (platform.Ack, string, error) {
	body, _ := json.Marshal(o)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/orders", bytes.NewReader(body))
	req.Header.Set("Idempotency-Key", load.NewKey())
	resp, err := hc.Do(req)
	if err != nil {
		return platform.Ack{}, "", err
	}
	defer resp.Body.Close()
	var r struct {
		OrderID      string `json:"order_id"`
		Status       string `json:"status"`
		FilledMWh    int64  `json:"filled_mwh,string"`
		RejectReason string `json:"reject_reason"`
		Instance     string `json:"instance"`
		Fills        []struct {
			MWh   int64 `json:"mwh,string"`
			Price int64 `json:"price_cents,string"`
		} `json:"fills"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.OrderID == "" {
		return platform.Ack{}, "", fmt.Errorf("POST /v1/orders: %d %v", resp.StatusCode, err)
	}
	line := fmt.Sprintf("%s %-4s %4d MWh %s:%d @ $%.2f → %d %s", o.Participant, o.Side, o.MWh, o.EnergySource, o.Vintage, float64(o.PriceCents)/100, resp.StatusCode, r.Status)
	for _, f := range r.Fills {
		line += fmt.Sprintf(", filled %d @ $%.2f", f.MWh, float64(f.Price)/100)
	}
	if r.RejectReason != "" {
		line += " (" + r.RejectReason + ")"
	}
	line += " [" + r.Instance + "]"
	ack := platform.Ack{OrderID: r.OrderID, Filled: r.FilledMWh, Fills: len(r.Fills)}
	if r.Status == "REJECTED" {
		ack.Status = 4
	} else {
		ack.Status = 1
	}
	return ack, line, nil
}

func get(ctx context.Context, hc *http.Client, url string) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	return do(hc, req)
}

func post(ctx context.Context, hc *http.Client, url, body string) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Idempotency-Key", load.NewKey())
	return do(hc, req)
}

func do(hc *http.Client, req *http.Request) (string, error) {
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	var v any
	if json.Unmarshal(b, &v) == nil {
		b, _ = json.Marshal(v)
	}
	return strings.TrimSpace(string(b)), err
}

func indent(s string) string {
	return "   " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n   ") + "\n"
}

type indentWriter struct{ w io.Writer }

func (i indentWriter) Write(b []byte) (int, error) {
	_, err := io.WriteString(i.w, indent(string(b)))
	return len(b), err
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// traceEnv turns -traces into the services' OTEL_* environment; the
// environment the demo runs in (OTEL_EXPORTER_OTLP_ENDPOINT, ...) passes
// through as well.
func traceEnv(traces string) []string {
	if traces == "" || traces == "none" {
		return nil
	}
	return []string{"OTEL_TRACES_EXPORTER=" + traces}
}
