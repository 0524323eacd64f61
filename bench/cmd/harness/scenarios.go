package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// scenario is one way of making the same call, with every process on its
// path.
type scenario struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	// Missing says why the scenario was not run (a part has not landed).
	Missing string `json:"missing,omitempty"`

	// http makes the scenario's servers and load generator speak HTTP
	// (benchserver and benchload -proto http) instead of gRPC.
	http bool

	load  *process
	path  []*process // every process a call passes through, load included
	setup func(ctx context.Context, h *harness) error
}

// protoArgs is the -proto flag for the scenario's benchserver and benchload.
func (sc *scenario) protoArgs() []string {
	if sc.http {
		return []string{"-proto", "http"}
	}
	return nil
}

// scenarios lists every scenario in the order of the table. Setup starts
// its processes; the load generator goes last.
func scenarios() []*scenario {
	return []*scenario{
		{
			Name:        "a-plain",
			Description: "(a) grpc-go, plaintext h2c",
			setup: func(ctx context.Context, h *harness) error {
				return h.direct(ctx, "a-plain", "plain", 1)
			},
		},
		{
			Name:        "b-tls",
			Description: "(b) grpc-go, static TLS 1.3, P-256 ECDSA server certificate",
			setup: func(ctx context.Context, h *harness) error {
				return h.direct(ctx, "b-tls", "tls", 1)
			},
		},
		{
			Name:        "b-tls-3",
			Description: "(b) over three backends: grpc-go static TLS 1.3, a static:/// target (gridmesh's discovery resolver only) balanced round robin; the like-for-like baseline for c's three-backend variants",
			setup: func(ctx context.Context, h *harness) error {
				return h.direct(ctx, "b-tls-3", "tls", 3)
			},
		},
		{
			Name:        "c-mtls",
			Description: "(c) gridmesh mTLS only: mesh.NewServer/mesh.Dial with mesh.WithoutTelemetry() and mesh.WithoutResilience(), SVIDs from the Workload API (meshd dev), per-call authorization, one backend",
			setup: func(ctx context.Context, h *harness) error {
				return h.meshScenario(ctx, "c-mtls", 1, false, "off", 1)
			},
		},
		{
			Name:        "c-bal",
			Description: "(c) gridmesh mTLS with discovery: as c-mtls, but a static:/// target over three backends, round robin (mesh.WithBalancer)",
			setup: func(ctx context.Context, h *harness) error {
				return h.meshScenario(ctx, "c-bal", 3, false, "off", 1)
			},
		},
		{
			Name:        "c-nootel",
			Description: "(c) gridmesh defaults with OTel not set up: three backends, round robin, mesh.Dial's default resilience policy, OTel not set up, so the mesh installs no telemetry",
			setup: func(ctx context.Context, h *harness) error {
				return h.meshScenario(ctx, "c-nootel", 3, true, "noop", 1)
			},
		},
		{
			Name:        "c-full",
			Description: "(c) gridmesh full: three backends, round robin, default resilience, OTel on (telemetry.Setup: batch span processor, OTLP/gRPC traces and metrics to a sink process), every call traced",
			setup: func(ctx context.Context, h *harness) error {
				return h.meshScenario(ctx, "c-full", 3, true, "otlp", 1)
			},
		},
		{
			Name:        "c-full-1pct",
			Description: "(c) as c-full with 1% of traces sampled (parent-based; Istio's default sampling rate); metrics for every call",
			setup: func(ctx context.Context, h *harness) error {
				return h.meshScenario(ctx, "c-full-1pct", 3, true, "otlp", 0.01)
			},
		},
		{
			Name:        "d-sidecar",
			Description: "(d) haproxy pair in http mode (h2 both sides): client-side proxy originates mTLS 1.3, server-side proxy terminates it, plaintext gRPC server behind",
			setup: func(ctx context.Context, h *harness) error {
				return h.sidecar(ctx, "d-sidecar", "http")
			},
		},
		{
			Name:        "d-l4",
			Description: "(d) haproxy pair in tcp mode (L4): TLS 1.3 origination and termination of the raw h2c byte stream",
			setup: func(ctx context.Context, h *harness) error {
				return h.sidecar(ctx, "d-l4", "tcp")
			},
		},
		// The HTTP side: the same call as a POST of the payload to
		// echo.HTTPPath answered with as many bytes, over HTTP/2, one
		// backend each (mesh.HTTPClient has no static:/// list of a plain
		// host, and net/http no balancer, so one backend is like for like).
		{
			Name:        "h-b-tls",
			Description: "(b, HTTP) net/http server and client, static TLS 1.3, P-256 ECDSA certificate, HTTP/2, one server",
			http:        true,
			setup: func(ctx context.Context, h *harness) error {
				return h.direct(ctx, "h-b-tls", "tls", 1)
			},
		},
		{
			Name:        "h-c-nootel",
			Description: "(c, HTTP) gridmesh defaults with OTel not set up: mesh.NewHTTPServer and mesh.HTTPClient (mTLS, HTTP/2, authorization, default resilience policy, the mesh's HTTP telemetry on no-op providers), one server",
			http:        true,
			setup: func(ctx context.Context, h *harness) error {
				return h.meshScenario(ctx, "h-c-nootel", 1, true, "noop", 1)
			},
		},
		{
			Name:        "h-c-full",
			Description: "(c, HTTP) as h-c-nootel with OTel on (telemetry.Setup, OTLP/gRPC traces and metrics to a sink process), every request traced",
			http:        true,
			setup: func(ctx context.Context, h *harness) error {
				return h.meshScenario(ctx, "h-c-full", 1, true, "otlp", 1)
			},
		},
		{
			Name:        "h-c-full-1pct",
			Description: "(c, HTTP) as h-c-full with 1% of traces sampled (parent-based); metrics for every request",
			http:        true,
			setup: func(ctx context.Context, h *harness) error {
				return h.meshScenario(ctx, "h-c-full-1pct", 1, true, "otlp", 0.01)
			},
		},
		{
			Name:        "h-d-sidecar",
			Description: "(d, HTTP) the haproxy pair in http mode (h2 both sides, mTLS 1.3 between them) in front of an h2c net/http server",
			http:        true,
			setup: func(ctx context.Context, h *harness) error {
				return h.sidecar(ctx, "h-d-sidecar", "http")
			},
		},
	}
}

// direct starts n grpc-go servers and a load generator that calls them;
// with more than one the target is static:/// and calls are balanced.
func (h *harness) direct(ctx context.Context, name, mode string, n int) error {
	sc := h.byName[name]
	args := append([]string{h.bin("benchserver"), "-mode", mode}, sc.protoArgs()...)
	if mode == "tls" {
		args = append(args, "-cert", h.pki.ServerCert, "-key", h.pki.ServerKey)
	}
	var addrs []string
	for i := range n {
		srvName := name + "-server"
		if n > 1 {
			srvName = fmt.Sprintf("%s-server%d", name, i)
		}
		srv, addr, err := h.l.startServer(srvName, nil, args...)
		if err != nil {
			return err
		}
		sc.path = append(sc.path, srv)
		addrs = append(addrs, addr)
	}
	largs := []string{h.bin("benchload"), "-mode", mode, "-target", addrs[0]}
	if n > 1 {
		largs = []string{h.bin("benchload"), "-mode", mode, "-balance", "-target", "static:///" + strings.Join(addrs, ",")}
	}
	largs = append(largs, sc.protoArgs()...)
	if mode == "tls" {
		largs = append(largs, "-ca", h.pki.CA, "-server-name", "localhost")
	}
	load, err := h.l.startLoad(name+"-load", nil, largs...)
	if err != nil {
		return err
	}
	sc.load = load
	sc.path = append([]*process{load}, sc.path...)
	return nil
}

// meshScenario starts n mesh servers and a mesh load generator; with more
// than one server the target is static:/// and calls are balanced; res
// keeps the resilience policy mesh.Dial applies by default. tel is the -telemetry mode of
// every mesh process; with otlp they export to an OTLP sink of the
// scenario's own, which is then on the path too, and sample is the
// fraction of traces sampled.
func (h *harness) meshScenario(ctx context.Context, name string, n int, res bool, tel string, sample float64) error {
	sc := h.byName[name]
	env := []string{}
	sargs := append([]string{"-telemetry", tel, "-sample", fmt.Sprint(sample)}, sc.protoArgs()...)
	largs := append([]string{"-telemetry", tel, "-sample", fmt.Sprint(sample)}, sc.protoArgs()...)
	if tel == "otlp" {
		sink, addr, err := h.l.startServer(name+"-otlp-sink", nil, h.bin("benchserver"), "-mode", "otlp-sink")
		if err != nil {
			return err
		}
		sink.role = "sink"
		sc.path = append(sc.path, sink)
		env = []string{"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + addr, "OTEL_EXPORTER_OTLP_INSECURE=true"}
	}
	largs = append(largs, fmt.Sprintf("-resilience=%v", res))
	var addrs []string
	for i := range n {
		srv, addr, err := h.l.startServer(fmt.Sprintf("%s-server%d", name, i), append(h.identityEnv("server"), env...),
			append([]string{h.bin("benchserver"), "-mode", "mesh"}, sargs...)...)
		if err != nil {
			return err
		}
		sc.path = append(sc.path, srv)
		addrs = append(addrs, addr)
	}
	target := addrs[0]
	if n > 1 {
		target = "static:///" + strings.Join(addrs, ",")
		largs = append(largs, "-balance")
	}
	largs = append([]string{h.bin("benchload"), "-mode", "mesh", "-target", target}, largs...)
	load, err := h.l.startLoad(name+"-load", append(h.identityEnv("load"), env...), largs...)
	if err != nil {
		return err
	}
	sc.load = load
	sc.path = append([]*process{load}, sc.path...)
	return nil
}

// sidecar starts a plaintext server behind two haproxy processes: the
// client-side one accepts h2c from the load generator and originates mTLS,
// the server-side one terminates it and forwards h2c to the server.
func (h *harness) sidecar(ctx context.Context, name, mode string) error {
	sc := h.byName[name]
	srv, addr, err := h.l.startServer(name+"-server", nil, append([]string{h.bin("benchserver"), "-mode", "plain"}, sc.protoArgs()...)...)
	if err != nil {
		return err
	}
	inPort, err := freePort()
	if err != nil {
		return err
	}
	tlsPort, err := freePort()
	if err != nil {
		return err
	}
	common := `global
	nbthread 1
	maxconn 4000
	ssl-default-bind-options ssl-min-ver TLSv1.3
	ssl-default-server-options ssl-min-ver TLSv1.3
defaults
	mode %s
	timeout connect 5s
	timeout client 5m
	timeout server 5m
`
	var serverSide, clientSide string
	if mode == "http" {
		serverSide = fmt.Sprintf(common+`frontend tls_in
	bind 127.0.0.1:%d ssl crt %s ca-file %s verify required alpn h2
	default_backend app
backend app
	server app %s proto h2
`, mode, tlsPort, h.pki.ServerPEM, h.pki.CA, addr)
		clientSide = fmt.Sprintf(common+`frontend app_in
	bind 127.0.0.1:%d proto h2
	default_backend mesh_out
backend mesh_out
	server peer 127.0.0.1:%d ssl verify required ca-file %s crt %s sni str(localhost) alpn h2
`, mode, inPort, tlsPort, h.pki.CA, h.pki.ClientPEM)
	} else {
		serverSide = fmt.Sprintf(common+`frontend tls_in
	bind 127.0.0.1:%d ssl crt %s ca-file %s verify required
	default_backend app
backend app
	server app %s
`, mode, tlsPort, h.pki.ServerPEM, h.pki.CA, addr)
		clientSide = fmt.Sprintf(common+`frontend app_in
	bind 127.0.0.1:%d
	default_backend mesh_out
backend mesh_out
	server peer 127.0.0.1:%d ssl verify required ca-file %s crt %s sni str(localhost)
`, mode, inPort, tlsPort, h.pki.CA, h.pki.ClientPEM)
	}
	start := func(side, cfg string, port int) (*process, error) {
		file := filepath.Join(h.dir, name+"-"+side+".cfg")
		if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
			return nil, err
		}
		p, err := h.l.start(name+"-haproxy-"+side, "proxy", side, nil, false, h.haproxy, "-db", "-f", file)
		if err != nil {
			return nil, err
		}
		return p, waitListen(ctx, fmt.Sprintf("127.0.0.1:%d", port), p)
	}
	sp, err := start("server", serverSide, tlsPort)
	if err != nil {
		return err
	}
	cp, err := start("client", clientSide, inPort)
	if err != nil {
		return err
	}
	load, err := h.l.startLoad(name+"-load", nil, append([]string{h.bin("benchload"), "-mode", "plain", "-target", fmt.Sprintf("127.0.0.1:%d", inPort)}, sc.protoArgs()...)...)
	if err != nil {
		return err
	}
	sc.load = load
	sc.path = []*process{load, cp, sp, srv}
	return nil
}
