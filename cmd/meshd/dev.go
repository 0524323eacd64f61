package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/internal/devworkloadapi"
	"github.com/gridmesh/gridmesh/security"
)

// runDev serves the SPIFFE Workload API from a development CA, one unix
// socket per identity: a workload started with
// SPIFFE_ENDPOINT_SOCKET=unix://<socket-dir>/<name>.sock gets the SVID
// spiffe://<trust-domain>/<name>. No attestation is done: development only.
//
// Its xDS server and registration API (-xds) speak mTLS like meshd serve,
// as spiffe://<trust-domain>/meshd with an SVID from the same CA (or from
// -spiffe-socket), so workloads with the CA's SVIDs connect with the
// mesh's defaults.
func runDev(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("meshd dev", flag.ContinueOnError)
	trustDomain := fs.String("trust-domain", "gridmesh.dev", "trust domain of the development CA")
	socketDir := fs.String("socket-dir", filepath.Join(os.TempDir(), "gridmesh-dev"), "directory for the Workload API sockets, one per identity")
	ttl := fs.Duration("svid-ttl", time.Hour, "lifetime of issued SVIDs; they rotate at half of it")
	ids := fs.String("identities", "", "comma-separated workload names or SPIFFE IDs, e.g. trading,settlement (required)")
	ready := fs.String("ready-file", "", "write the socket list to this file once every socket listens (for scripts)")
	xdsListen := fs.String("xds", "127.0.0.1:15010", "also serve xDS and the registration API here, as `meshd serve` does; empty: Workload API only")
	xdsConfig := fs.String("config", "", "meshd YAML config for the xDS server (see meshd serve -h); optional")
	var idf identityFlags
	idf.register(fs, true)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := idf.check(true); err != nil {
		return err
	}
	td, err := spiffeid.TrustDomainFromString(*trustDomain)
	if err != nil {
		return fmt.Errorf("-trust-domain %q: %w (want a name like example.org)", *trustDomain, err)
	}
	if strings.TrimSpace(*ids) == "" {
		return fmt.Errorf("-identities is empty: name the workloads to serve, e.g. -identities trading,settlement")
	}
	ca, err := security.NewDevCA(td, security.DevCAConfig{SVIDTTL: *ttl})
	if err != nil {
		return err
	}
	srv := devworkloadapi.New(ca)
	defer srv.Close()
	var lines []string
	for _, name := range strings.Split(*ids, ",") {
		id, sock, err := devIdentity(td, *socketDir, strings.TrimSpace(name))
		if err != nil {
			return err
		}
		addr, err := srv.Add(sock, id)
		if err != nil {
			return err
		}
		lines = append(lines, fmt.Sprintf("%s SPIFFE_ENDPOINT_SOCKET=%s", id, addr))
	}
	xdsErr := make(chan error, 1)
	if *xdsListen != "" {
		// meshd's own SVID: from the dev CA, or the Workload API given.
		var src security.Source
		if !idf.plaintext {
			opened, closer, err := idf.open(ctx, true)
			if err != nil {
				return err
			}
			if closer != nil {
				defer closer.Close()
				src = opened
			} else {
				dev, err := ca.Source(spiffeid.RequireFromPath(td, controlplane.DefaultID))
				if err != nil {
					return fmt.Errorf("meshd's SVID from the development CA: %w", err)
				}
				defer dev.Close()
				src = dev
			}
		}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		xdsReady := make(chan string, 1)
		go func() {
			// No startup grace: in development nothing needs to re-register
			// before the first push.
			xdsErr <- serve(ctx, &serveFlags{config: *xdsConfig, listen: *xdsListen, watch: time.Second, id: idf},
				slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
				src, func(xdsAddr, _ string) { xdsReady <- xdsAddr })
		}()
		select {
		case addr := <-xdsReady:
			if idf.plaintext {
				lines = append(lines, "xDS and registration API: "+addr+" in PLAINTEXT (mesh.WithControlPlane and mesh.WithInsecurePlaintextControlPlaneForLocalDebugging)")
			} else {
				id, _ := security.ID(src)
				lines = append(lines, "xDS and registration API: "+addr+" over mTLS as "+id.String()+" (mesh.WithControlPlane)")
			}
		case err := <-xdsErr:
			return fmt.Errorf("xDS server: %w", err)
		}
	}
	printTo(os.Stdout, "meshd dev: serving the SPIFFE Workload API (development CA, no attestation)", lines)
	if *ready != "" {
		if err := os.WriteFile(*ready, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			return fmt.Errorf("-ready-file: %w", err)
		}
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-xdsErr:
		return fmt.Errorf("xDS server: %w", err)
	}
}

// devIdentity maps a workload name ("trading", "ns/prod/trading") or a full
// SPIFFE ID to its ID and socket path: the ID path with "/" turned into "_".
func devIdentity(td spiffeid.TrustDomain, dir, name string) (spiffeid.ID, string, error) {
	var id spiffeid.ID
	var err error
	if strings.HasPrefix(name, "spiffe://") {
		id, err = spiffeid.FromString(name)
		if err == nil && !id.MemberOf(td) {
			err = fmt.Errorf("not in trust domain %s", td)
		}
	} else {
		id, err = spiffeid.FromPath(td, "/"+strings.Trim(name, "/"))
	}
	if err != nil || id.Path() == "" {
		return spiffeid.ID{}, "", fmt.Errorf("-identities: %q is not a workload name or SPIFFE ID of %s: %v", name, td, err)
	}
	sock := filepath.Join(dir, strings.ReplaceAll(strings.TrimPrefix(id.Path(), "/"), "/", "_")+".sock")
	if len(sock) > 100 {
		return spiffeid.ID{}, "", fmt.Errorf("socket path %s is too long for a unix socket: use a shorter -socket-dir", sock)
	}
	return id, sock, nil
}

func printTo(w io.Writer, title string, lines []string) {
	fmt.Fprintln(w, title)
	for _, l := range lines {
		fmt.Fprintln(w, "  "+l)
	}
}
