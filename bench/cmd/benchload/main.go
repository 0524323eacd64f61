// Command benchload is the benchmark's load generator. It opens one client
// connection and then takes commands, one per line, on stdin:
//
//	warm {spec}   make unmeasured calls; answers "warm"
//	run {spec}    measure one window; answers "result {json}"
//
// where {spec} is a loadgen.Spec in JSON. Answers go to stdout; it exits
// when stdin closes. The result carries the generator's own CPU time over
// the window (from /proc/self/stat), so the harness can sum CPU over every
// process on the path.
//
//	benchload -mode plain|tls|mesh -target host:port [-proto grpc|http] [-ca ca.pem -server-name n]
//	     [-balance] [-resilience] [-telemetry off|noop|otlp]
//
// In mesh mode the identity comes from the SPIFFE Workload API named by
// SPIFFE_ENDPOINT_SOCKET; with -balance the target is static:///a,b,c and
// calls are spread round robin (mesh.WithBalancer); -resilience=false turns
// off the resilience policy mesh.Dial applies by default (resilience.Default());
// -telemetry picks the mesh's OTel setup as in benchserver.
//
// With -proto http every call is a POST of the payload to echo.HTTPPath,
// read to the end: over h2c with prior knowledge (plain), over net/http with
// TLS 1.3 and HTTP/2 (tls), or through mesh.HTTPClient (mesh; -balance is
// not offered there).
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/gridmesh/gridmesh/bench/internal/echo"
	"github.com/gridmesh/gridmesh/bench/internal/loadgen"
	"github.com/gridmesh/gridmesh/bench/internal/proc"
	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
}

// Result is a window's loadgen.Result plus the generator's CPU time.
type Result struct {
	loadgen.Result
	CPUSeconds float64 `json:"cpu_seconds"`
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	mode := fs.String("mode", "plain", "plain, tls or mesh")
	target := fs.String("target", "", "server address, or static:///a,b,c with -balance")
	caFile := fs.String("ca", "", "PEM CA certificate that signed the server's (tls mode)")
	serverName := fs.String("server-name", "localhost", "name to verify in the server certificate (tls mode)")
	balance := fs.Bool("balance", false, "resolve a static:/// target with gridmesh's discovery and balance round robin")
	res := fs.Bool("resilience", true, "mesh mode: keep the resilience policy mesh.Dial applies by default (false: mesh.WithoutResilience)")
	sample := fs.Float64("sample", 1, "with -telemetry otlp: fraction of traces sampled")
	tel := fs.String("telemetry", "off", "mesh mode: off (mesh.WithoutTelemetry), noop (mesh defaults, OTel not set up) or otlp")
	proto := fs.String("proto", "grpc", "grpc or http")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *target == "" {
		return errors.New("-target is required")
	}
	var caller func(payload int) loadgen.Call
	switch *proto {
	case "grpc":
		conn, cleanup, err := dial(ctx, *mode, *target, *caFile, *serverName, *balance, *res, *tel, *sample)
		if err != nil {
			return err
		}
		defer cleanup()
		defer conn.Close()
		client := testgrpc.NewTestServiceClient(conn)
		// Check the path once before taking commands.
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err = client.UnaryCall(cctx, echo.Request(1), grpc.WaitForReady(true))
		cancel()
		if err != nil {
			return fmt.Errorf("first call to %s: %w", *target, err)
		}
		caller = func(payload int) loadgen.Call {
			req := echo.Request(payload)
			return func(ctx context.Context) error {
				_, err := client.UnaryCall(ctx, req)
				return err
			}
		}
	case "http":
		hc, url, cleanup, err := httpClient(ctx, *mode, *target, *caFile, *serverName, *balance, *res, *tel, *sample)
		if err != nil {
			return err
		}
		defer cleanup()
		caller = func(payload int) loadgen.Call { return httpCall(hc, url, payload) }
		if err := firstHTTPCall(ctx, caller(1)); err != nil {
			return fmt.Errorf("first call to %s: %w", url, err)
		}
	default:
		return errors.New("-proto must be grpc or http, not " + *proto)
	}
	fmt.Println("ready")

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		verb, arg, _ := strings.Cut(in.Text(), " ")
		var spec loadgen.Spec
		if err := json.Unmarshal([]byte(arg), &spec); err != nil {
			return fmt.Errorf("bad command %q: %w", in.Text(), err)
		}
		call := caller(spec.Payload)
		switch verb {
		case "warm":
			loadgen.Warm(ctx, call, max(min(spec.Concurrency, 64), 8), spec.Warmup)
			fmt.Println("warm")
		case "run":
			cpu0, err := proc.CPU(os.Getpid())
			if err != nil {
				return err
			}
			r := loadgen.Run(ctx, call, spec)
			cpu1, err := proc.CPU(os.Getpid())
			if err != nil {
				return err
			}
			out, err := json.Marshal(Result{Result: r, CPUSeconds: (cpu1 - cpu0).Seconds()})
			if err != nil {
				return err
			}
			fmt.Printf("result %s\n", out)
		default:
			return fmt.Errorf("unknown command %q", verb)
		}
	}
	return in.Err()
}

func dial(ctx context.Context, mode, target, caFile, serverName string, balance, res bool, tel string, sample float64) (*grpc.ClientConn, func(), error) {
	nop := func() {}
	var opts []grpc.DialOption
	if balance && mode != "mesh" {
		reg, err := discovery.New(discovery.Config{})
		if err != nil {
			return nil, nop, err
		}
		o, err := reg.DialOptions(discovery.Balancer{Policy: discovery.RoundRobin})
		if err != nil {
			return nil, nop, err
		}
		opts = append(opts, o...)
	}
	switch mode {
	case "plain":
		conn, err := grpc.NewClient(target, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
		return conn, nop, err
	case "tls":
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, nop, fmt.Errorf("tls mode needs -ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nop, fmt.Errorf("no certificate in %s", caFile)
		}
		creds := credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS13})
		conn, err := grpc.NewClient(target, append(opts, grpc.WithTransportCredentials(creds))...)
		return conn, nop, err
	case "mesh":
		src, err := security.NewWorkloadAPISource(ctx, security.WorkloadAPIConfig{})
		if err != nil {
			return nil, nop, err
		}
		mopts, shutdown, err := telemetryMode(ctx, tel, "bench-load", sample)
		if err != nil {
			src.Close()
			return nil, nop, err
		}
		cleanup := func() { shutdown(); src.Close() }
		if !res {
			mopts = append(mopts, mesh.WithoutResilience())
		}
		if balance {
			mopts = append(mopts, mesh.WithBalancer(discovery.Balancer{Policy: discovery.RoundRobin}))
		}
		mopts = append(mopts, mesh.WithIdentity(src))
		conn, err := mesh.Dial(ctx, target, mopts...)
		if err != nil {
			cleanup()
			return nil, nop, err
		}
		return conn, cleanup, nil
	default:
		return nil, nop, errors.New("-mode must be plain, tls or mesh, not " + mode)
	}
}
