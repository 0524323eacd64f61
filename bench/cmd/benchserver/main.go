// Command benchserver is the benchmark's server: the echo TestService over
// plaintext, static TLS 1.3 or the mesh, or an OTLP trace sink that accepts
// and discards spans; with -proto http, the echo HTTP handler
// (echo.HTTPHandler) over h2c (plain), net/http with static TLS 1.3 (tls)
// or mesh.NewHTTPServer (mesh). It prints "listening <addr>" once it
// accepts connections and serves until SIGINT or SIGTERM.
//
//	benchserver -mode plain|tls|mesh|otlp-sink [-proto grpc|http] [-listen 127.0.0.1:0] [-cert c.pem -key k.pem] [-telemetry off|noop|otlp]
//
// In mesh mode the identity comes from the SPIFFE Workload API named by
// SPIFFE_ENDPOINT_SOCKET; -telemetry picks the mesh's OTel setup (see
// telemetryMode); with otlp the exporters send to OTEL_EXPORTER_OTLP_ENDPOINT
// (an otlp-sink).
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	collectormetrics "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/gridmesh/gridmesh/bench/internal/echo"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	mode := fs.String("mode", "plain", "plain, tls, mesh or otlp-sink")
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	certFile := fs.String("cert", "", "PEM certificate chain (tls mode)")
	keyFile := fs.String("key", "", "PEM private key (tls mode)")
	sample := fs.Float64("sample", 1, "with -telemetry otlp: fraction of traces sampled")
	tel := fs.String("telemetry", "off", "mesh mode: off (mesh.WithoutTelemetry), noop (mesh defaults, OTel not set up) or otlp")
	proto := fs.String("proto", "grpc", "grpc or http (plain, tls and mesh modes)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	switch *proto {
	case "grpc":
	case "http":
		return serveHTTP(ctx, lis, *mode, *certFile, *keyFile, *tel, *sample)
	default:
		return errors.New("-proto must be grpc or http, not " + *proto)
	}
	switch *mode {
	case "plain", "tls", "otlp-sink":
		var opts []grpc.ServerOption
		if *mode == "tls" {
			cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
			if err != nil {
				return fmt.Errorf("tls mode needs -cert and -key: %w", err)
			}
			opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{
				Certificates: []tls.Certificate{cert},
				MinVersion:   tls.VersionTLS13,
			})))
		}
		srv := grpc.NewServer(opts...)
		if *mode == "otlp-sink" {
			collectortrace.RegisterTraceServiceServer(srv, &sink{})
			collectormetrics.RegisterMetricsServiceServer(srv, &metricSink{})
		} else {
			testgrpc.RegisterTestServiceServer(srv, echo.Service{})
		}
		go func() { <-ctx.Done(); srv.Stop() }()
		fmt.Println("listening", lis.Addr())
		return srv.Serve(lis)
	case "mesh":
		src, err := security.NewWorkloadAPISource(ctx, security.WorkloadAPIConfig{})
		if err != nil {
			return err
		}
		defer src.Close()
		opts, shutdown, err := telemetryMode(ctx, *tel, "bench-server", *sample)
		if err != nil {
			return err
		}
		defer shutdown()
		srv, err := mesh.NewServer(append(opts, mesh.WithIdentity(src), mesh.WithDrainTimeout(0))...)
		if err != nil {
			return err
		}
		defer srv.Close()
		testgrpc.RegisterTestServiceServer(srv, echo.Service{})
		fmt.Println("listening", lis.Addr())
		return srv.Serve(ctx, lis)
	default:
		return errors.New("-mode must be plain, tls, mesh or otlp-sink, not " + *mode)
	}
}

// serveHTTP serves echo.HTTPHandler on lis: h2c with prior knowledge
// (plain, what the sidecar's server-side proxy speaks), net/http with a
// static TLS 1.3 certificate offering h2 (tls), or mesh.NewHTTPServer.
func serveHTTP(ctx context.Context, lis net.Listener, mode, certFile, keyFile, tel string, sample float64) error {
	switch mode {
	case "plain", "tls":
		srv := &http.Server{Handler: echo.HTTPHandler(), ReadHeaderTimeout: 10 * time.Second}
		if mode == "plain" {
			var p http.Protocols
			p.SetHTTP1(true)
			p.SetUnencryptedHTTP2(true)
			srv.Protocols = &p
		} else {
			cert, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return fmt.Errorf("tls mode needs -cert and -key: %w", err)
			}
			srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13, NextProtos: []string{"h2", "http/1.1"}}
		}
		go func() {
			<-ctx.Done()
			_ = srv.Close()
		}()
		fmt.Println("listening", lis.Addr())
		var err error
		if mode == "plain" {
			err = srv.Serve(lis)
		} else {
			err = srv.ServeTLS(lis, "", "")
		}
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	case "mesh":
		src, err := security.NewWorkloadAPISource(ctx, security.WorkloadAPIConfig{})
		if err != nil {
			return err
		}
		defer src.Close()
		opts, shutdown, err := telemetryMode(ctx, tel, "bench-server", sample)
		if err != nil {
			return err
		}
		defer shutdown()
		srv, err := mesh.NewHTTPServer(echo.HTTPHandler(), append(opts, mesh.WithIdentity(src), mesh.WithDrainTimeout(0))...)
		if err != nil {
			return err
		}
		defer srv.Close()
		fmt.Println("listening", lis.Addr())
		return srv.Serve(ctx, lis)
	default:
		return errors.New("-proto http: -mode must be plain, tls or mesh, not " + mode)
	}
}

// sink accepts OTLP trace and metric exports and drops them: the cheapest
// collector there is, so the exporters' own cost is what gets measured.
type sink struct {
	collectortrace.UnimplementedTraceServiceServer
}

func (*sink) Export(context.Context, *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

type metricSink struct {
	collectormetrics.UnimplementedMetricsServiceServer
}

func (*metricSink) Export(context.Context, *collectormetrics.ExportMetricsServiceRequest) (*collectormetrics.ExportMetricsServiceResponse, error) {
	return &collectormetrics.ExportMetricsServiceResponse{}, nil
}
