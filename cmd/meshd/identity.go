package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/security"
)

// plaintextFlag is the one way to run meshd without mTLS. Its name says
// what it costs.
const plaintextFlag = "insecure-plaintext-xds-for-local-debugging"

// identityFlags say where meshd's own SVID comes from and who its
// operators are; meshd serve and meshd dev share them.
type identityFlags struct {
	socket     string   // -spiffe-socket
	expectedID string   // -spiffe-id
	certFile   string   // -svid-cert
	keyFile    string   // -svid-key
	bundleFile string   // -svid-bundle
	operators  []string // -operator-id, repeated or comma-separated
	plaintext  bool     // -insecure-plaintext-xds-for-local-debugging
	wait       time.Duration
}

func (f *identityFlags) register(fs *flag.FlagSet, devCA bool) {
	src := "the Workload API socket meshd takes its own SVID from (a SPIRE agent: unix:///run/spire/agent.sock); default SPIFFE_ENDPOINT_SOCKET"
	if devCA {
		src = "take meshd's own SVID from this Workload API (a SPIRE agent) instead of the development CA; clients then need SVIDs of that trust domain"
	}
	fs.StringVar(&f.socket, "spiffe-socket", "", src)
	fs.StringVar(&f.expectedID, "spiffe-id", "", "with -spiffe-socket: the SVID to use when the agent offers several (default: the first); clients expect spiffe://<trust-domain>/meshd unless told otherwise (mesh.WithControlPlaneID)")
	if !devCA {
		fs.StringVar(&f.certFile, "svid-cert", "", "PEM file with meshd's X.509-SVID and intermediates (with -svid-key and -svid-bundle; reloaded on change)")
		fs.StringVar(&f.keyFile, "svid-key", "", "PEM file with the private key of -svid-cert")
		fs.StringVar(&f.bundleFile, "svid-bundle", "", "PEM file with the CA certificates of meshd's trust domain, which client SVIDs must chain to")
	}
	fs.Func("operator-id", "SPIFFE ID that may register and deregister any endpoint and read /debug (repeat, or separate with commas); other workloads may register only endpoints with their own SPIFFE ID", func(v string) error {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				f.operators = append(f.operators, s)
			}
		}
		return nil
	})
	fs.BoolVar(&f.plaintext, plaintextFlag, false, "serve xDS and the registration API in PLAINTEXT with NO authentication: anyone who can reach meshd can read every policy and register or deregister anything. Local debugging only; clients must opt in with mesh.WithInsecurePlaintextControlPlaneForLocalDebugging")
	fs.DurationVar(&f.wait, "identity-wait", 30*time.Second, "how long to wait at start for meshd's SVID from -spiffe-socket or the -svid files")
}

// check refuses contradictory or incomplete identity flags; devCA says
// whether the dev CA is the default source (meshd dev).
func (f *identityFlags) check(devCA bool) error {
	files := f.certFile != "" || f.keyFile != "" || f.bundleFile != ""
	switch {
	case f.plaintext && (f.socket != "" || files || len(f.operators) > 0):
		return fmt.Errorf("-%s serves without any identity, so -spiffe-socket, -svid-* and -operator-id mean nothing with it: drop one or the other", plaintextFlag)
	case f.socket != "" && files:
		return errors.New("-spiffe-socket and -svid-cert/-svid-key/-svid-bundle both name meshd's SVID source: keep one")
	case files && (f.certFile == "" || f.keyFile == "" || f.bundleFile == ""):
		var missing []string
		for name, v := range map[string]string{"-svid-cert": f.certFile, "-svid-key": f.keyFile, "-svid-bundle": f.bundleFile} {
			if v == "" {
				missing = append(missing, name)
			}
		}
		sort.Strings(missing)
		return fmt.Errorf("meshd's SVID files are incomplete: %s not set; give -svid-cert, -svid-key and -svid-bundle together", strings.Join(missing, " and "))
	case f.expectedID != "" && f.socket == "" && (devCA || files || os.Getenv("SPIFFE_ENDPOINT_SOCKET") == ""):
		return errors.New("-spiffe-id picks an SVID from the Workload API: use it with -spiffe-socket (or SPIFFE_ENDPOINT_SOCKET)")
	case !devCA && !f.plaintext && !files && f.socket == "" && os.Getenv("SPIFFE_ENDPOINT_SOCKET") == "":
		return fmt.Errorf("no SVID source for meshd: pass -spiffe-socket unix:///run/spire/agent.sock (or set SPIFFE_ENDPOINT_SOCKET), or -svid-cert, -svid-key and -svid-bundle; for local debugging only, -%s serves without TLS", plaintextFlag)
	}
	for _, op := range f.operators {
		if _, err := spiffeid.FromString(op); err != nil {
			return fmt.Errorf("-operator-id %q is not a SPIFFE ID (%v): write spiffe://<trust-domain>/<path>", op, err)
		}
	}
	if f.expectedID != "" {
		if _, err := spiffeid.FromString(f.expectedID); err != nil {
			return fmt.Errorf("-spiffe-id %q is not a SPIFFE ID (%v): write spiffe://<trust-domain>/meshd", f.expectedID, err)
		}
	}
	return nil
}

// open returns meshd's SVID source from the flags (nil, nil in plaintext,
// and for meshd dev (devCA) without -spiffe-socket: the dev CA's then),
// and a closer for it.
func (f *identityFlags) open(ctx context.Context, devCA bool) (security.Source, io.Closer, error) {
	ctx, cancel := context.WithTimeout(ctx, f.wait)
	defer cancel()
	switch {
	case f.certFile != "":
		src, err := security.NewFileSource(ctx, security.FileConfig{CertFile: f.certFile, KeyFile: f.keyFile, BundleFile: f.bundleFile})
		if err != nil {
			return nil, nil, fmt.Errorf("-svid-cert %s, -svid-key %s, -svid-bundle %s: %w (write PEM files: the SVID leaf then intermediates, its PKCS#8 key, the trust domain's CA certificates)", f.certFile, f.keyFile, f.bundleFile, err)
		}
		return src, src, nil
	case f.socket != "" || (!devCA && !f.plaintext && os.Getenv("SPIFFE_ENDPOINT_SOCKET") != ""):
		cfg := security.WorkloadAPIConfig{Address: f.socket}
		if f.expectedID != "" {
			cfg.ExpectedID = spiffeid.RequireFromString(f.expectedID)
		}
		src, err := security.NewWorkloadAPISource(ctx, cfg)
		if err != nil {
			name := "-spiffe-socket"
			if f.socket == "" {
				name = "SPIFFE_ENDPOINT_SOCKET"
			}
			return nil, nil, fmt.Errorf("%s: meshd's SVID: %w (is the SPIRE agent running, and is an entry registered for meshd, spiffe://<trust-domain>/meshd?)", name, err)
		}
		return src, src, nil
	}
	return nil, nil, nil
}

// mtls returns the controlplane option for src and the operator flags.
func (f *identityFlags) mtls(src security.Source) (controlplane.Option, error) {
	own, err := security.ID(src)
	if err != nil {
		return nil, err
	}
	cfg := controlplane.MTLSConfig{Source: src}
	for _, op := range f.operators {
		id := spiffeid.RequireFromString(op) // checked
		if !id.MemberOf(own.TrustDomain()) {
			return nil, fmt.Errorf("-operator-id %s is not in meshd's trust domain %s: operators are workloads of %s", id, own.TrustDomain(), own.TrustDomain())
		}
		cfg.Operators = append(cfg.Operators, id)
	}
	return controlplane.WithMTLS(cfg), nil
}
