package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/security"
)

const serveUsage = `usage: meshd serve [flags]

Serve xDS (ADS) to grpc-go's xDS clients from a YAML config, the
registration API and, optionally, the Consul catalog. The -listen address
also answers HTTP/1.1: the registration API (/v1/endpoints), /healthz,
/metrics and /debug/config, /debug/clients.

The config file replaces the whole config, so meshd refuses a file that may
be half-written: empty or only comments, over 4 MiB, not ending with a
newline, without the top-level key services, with a key that has no value,
with two YAML documents, or not parsing as a whole. At start a refused file
stops meshd; later a refused edit is logged and the last good config stays.
To remove every service, write "services: []". Split weights are relative
(9 and 1 split calls like 90 and 10); each route's total is 1 to 4294967295.
Registration bodies are JSON, at most 64 KiB.

Registrations: with -consul, the registration API writes them to the
Consul catalog (a TTL check for registrations with a TTL) and meshd reads
them back from it, so several meshd replicas with the same -config and
-consul serve identical snapshots and any of them takes registrations.
Without -consul they live in this process's memory: run a single meshd
then; a second replica would not know what the first was told (meshd warns
at start, and its registration answers say "Meshd-Registration-Store:
memory", which mesh servers given several control planes warn about).
The Consul token is read from CONSUL_HTTP_TOKEN; it needs service:write
for the services that register, and read access to the catalog.

Both speak mTLS only: meshd presents its own SVID (from -spiffe-socket or
SPIFFE_ENDPOINT_SOCKET, a SPIRE agent, or from -svid-cert, -svid-key and
-svid-bundle) and requires a client SVID of its trust domain. Clients
expect meshd's ID to be spiffe://<trust-domain>/meshd unless told
otherwise (mesh.WithControlPlaneID). Every xDS stream is served as its
verified SPIFFE ID: a server's listener, with its RBAC, goes only to that
server's identity. A workload may register and deregister only endpoints
with its own SPIFFE ID; -operator-id identities may do anything and read
/debug; other requests get 403 naming the rule. The HTTP API is HTTP/1.1
over TLS. -insecure-plaintext-xds-for-local-debugging turns all of this off.

flags:`

// serveFlags are the flags of meshd serve.
type serveFlags struct {
	config       string
	listen       string
	registration string
	consul       string
	grace        time.Duration
	watch        time.Duration
	logLevel     string
	kube         kubeFlags
	id           identityFlags
}

func parseServeFlags(args []string, out io.Writer) (*serveFlags, error) {
	f := &serveFlags{}
	fs := flag.NewFlagSet("meshd serve", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&f.config, "config", "", "YAML config file (services, routes, policies; at most 4 MiB); reloaded when it changes and has stayed the same for one -watch-interval. Optional: without it meshd serves registered endpoints with default settings")
	fs.StringVar(&f.listen, "listen", "127.0.0.1:15010", "xDS (ADS) address")
	fs.StringVar(&f.registration, "registration", "", "extra HTTP address for the registration API, /healthz, /metrics and /debug; they are always served on -listen too (HTTP/1.1 beside gRPC)")
	fs.StringVar(&f.consul, "consul", "", "Consul agent address (host:port) to read endpoints from and to keep registrations in, shared by every replica; empty: no Consul, registrations in this process's memory (run a single meshd)")
	fs.DurationVar(&f.grace, "startup-grace", 10*time.Second, "hold the first snapshot this long after start, so that after a restart servers re-register before clients are sent endpoint lists (keep it above the servers' heartbeat interval, 5s by default); clients keep their cached config meanwhile. 0 to serve at once")
	fs.DurationVar(&f.watch, "watch-interval", time.Second, "how often to check the config file for changes")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	f.kube.register(fs)
	f.id.register(fs, false)
	fs.Usage = func() {
		fmt.Fprintln(out, serveUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("meshd serve takes no arguments, got %q", fs.Args())
	}
	if _, _, err := net.SplitHostPort(f.listen); err != nil {
		return nil, fmt.Errorf("-listen %q is not host:port: %w", f.listen, err)
	}
	if err := f.kube.check(fs); err != nil {
		return nil, err
	}
	if err := f.id.check(false); err != nil {
		return nil, err
	}
	return f, nil
}

// runServe runs meshd serve until ctx ends.
func runServe(ctx context.Context, args []string) error {
	f, err := parseServeFlags(args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("-log-level %q: use debug, info, warn or error", f.logLevel)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	src, closer, err := f.id.open(ctx, false)
	if err != nil {
		return err
	}
	if closer != nil {
		defer closer.Close()
	}
	return serve(ctx, f, logger, src, nil)
}

// serve runs meshd with parsed flags and its SVID source src (nil only
// with -insecure-plaintext-xds-for-local-debugging). ready, if not nil,
// receives the bound xDS and HTTP addresses once both listen (tests use
// port 0).
func serve(ctx context.Context, f *serveFlags, logger *slog.Logger, src security.Source, ready func(xdsAddr, httpAddr string)) error {
	opts := []controlplane.Option{controlplane.WithLogger(logger), controlplane.WithStartupGrace(f.grace)}
	switch {
	case f.id.plaintext:
		logger.Warn("serving xDS and the registration API in PLAINTEXT without authentication (-" + plaintextFlag + "): anyone who can reach meshd can read every policy and register anything; local debugging only")
		opts = append(opts, controlplane.WithInsecurePlaintextForLocalDebugging())
	case src == nil:
		return fmt.Errorf("no SVID source for meshd: pass -spiffe-socket, or -svid-cert, -svid-key and -svid-bundle; for local debugging only, -%s", plaintextFlag)
	default:
		o, err := f.id.mtls(src)
		if err != nil {
			return err
		}
		opts = append(opts, o)
		if id, err := security.ID(src); err == nil && id.Path() != controlplane.DefaultID {
			logger.Warn("meshd's SPIFFE ID is not spiffe://<trust-domain>/meshd, which clients expect by default: give them mesh.WithControlPlaneID", "id", id)
		}
	}
	var consul *api.Client
	if f.consul != "" {
		cc := api.DefaultConfig()
		cc.Address = f.consul
		var err error
		if consul, err = api.NewClient(cc); err != nil {
			return fmt.Errorf("-consul %q: %w", f.consul, err)
		}
		opts = append(opts, controlplane.WithConsulRegistrations(consul))
	} else if f.kube.enabled {
		logger.Info("no -consul: endpoints come from Kubernetes, which every replica reads; registrations through the registration API stay in this meshd's memory, so run meshed servers with mesh.WithoutControlPlaneRegistration (their EndpointSlices list them) or give every replica -consul")
	} else {
		logger.Warn("no -consul: registrations are kept in this meshd's memory; a second meshd replica would not see them and would serve other endpoints. Run a single meshd, or give every replica -consul")
	}
	s := controlplane.NewServer(opts...)
	defer s.Close()
	if f.config != "" {
		// At start there is no last good config to fall back on: refuse to
		// start rather than serve something the operator did not write.
		// (Parsed here rather than with s.LoadConfigFile, which would also
		// log the refusal that main prints.)
		cfg, err := controlplane.LoadConfigFile(f.config)
		if err != nil {
			return err
		}
		if err := s.SetConfig(f.config, cfg); err != nil {
			return err
		}
	} else if err := s.SetConfig("(no config file)", &controlplane.Config{}); err != nil {
		return err
	}
	stopKube, err := startKubernetes(ctx, f.kube, s, logger)
	if err != nil {
		return err
	}
	defer stopKube()

	xlis, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("listen for xDS: %w", err)
	}
	var hlis net.Listener
	if f.registration != "" {
		if hlis, err = net.Listen("tcp", f.registration); err != nil {
			xlis.Close()
			return fmt.Errorf("listen for the registration API: %w", err)
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.Serve(xlis); err != nil {
			errc <- err
		}
	}()
	httpAddr := xlis.Addr().String() // the HTTP API shares the xDS port
	if hlis != nil {
		httpAddr = hlis.Addr().String()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.ServeHTTP(hlis); err != nil {
				errc <- fmt.Errorf("registration API: %w", err)
			}
		}()
	}
	if f.config != "" {
		wg.Add(1)
		go func() { defer wg.Done(); _ = s.WatchConfigFile(ctx, f.config, f.watch) }()
	}
	if consul != nil {
		wg.Add(1)
		go func() { defer wg.Done(); _ = controlplane.NewConsulSource(consul, s).Run(ctx) }()
	}
	logger.Info("meshd serving", "xds", xlis.Addr().String(), "http", httpAddr, "config", f.config, "consul", f.consul, "registrations", s.Stats().RegistrationStore, "version", s.Version())
	if ready != nil {
		ready(xlis.Addr().String(), httpAddr)
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	cancel()
	s.Close()
	wg.Wait()
	return runErr
}
