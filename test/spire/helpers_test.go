package spire_test

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// fastBackoff retries the Workload API every 250ms instead of go-spiffe's
// linear 1s..30s, so tests notice an agent that came back quickly.
type fastBackoff struct{}

func (fastBackoff) NewBackoff() workloadapi.Backoff { return fastBackoff{} }
func (fastBackoff) Next() time.Duration             { return 250 * time.Millisecond }
func (fastBackoff) Reset()                          {}

// newSource opens an X509Source on addr, blocking until the first SVID or
// ctx's deadline, and closes it in t.Cleanup.
func newSource(ctx context.Context, t testing.TB, addr string) *workloadapi.X509Source {
	t.Helper()
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(
		workloadapi.WithAddr(addr), workloadapi.WithBackoffStrategy(fastBackoff{})))
	if err != nil {
		t.Fatalf("NewX509Source(%s): %v", addr, err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

// waitFor polls cond every 100ms until it holds, failing t when ctx ends first.
func waitFor(ctx context.Context, t testing.TB, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-tick.C:
		}
	}
}

// authorityID is SPIRE's name for a CA: the hex of its subject key ID.
func authorityID(cert *x509.Certificate) string { return hex.EncodeToString(cert.SubjectKeyId) }

// bundleHas reports whether the trust domain's bundle in src holds the CA
// named by authority ID.
func bundleHas(src x509bundle.Source, td spiffeid.TrustDomain, id string) bool {
	b, err := src.GetX509BundleForTrustDomain(td)
	if err != nil {
		return false
	}
	for _, c := range b.X509Authorities() {
		if authorityID(c) == id {
			return true
		}
	}
	return false
}

// signedBy returns the authority ID of the CA that signed src's current
// SVID (its authority key ID), or "" without one.
func signedBy(src x509svid.Source) string {
	svid, err := src.GetX509SVID()
	if err != nil || len(svid.Certificates) == 0 {
		return ""
	}
	return authorityKeyID(svid.Certificates[0])
}

// authorityKeyID names the CA that signed cert, as SPIRE names authorities;
// "" for nil.
func authorityKeyID(cert *x509.Certificate) string {
	if cert == nil {
		return ""
	}
	return hex.EncodeToString(cert.AuthorityKeyId)
}

// runWorkloadAs runs this test binary as a separate workload under uid/gid
// uid, asking addr's Workload API for an SVID within timeout. It returns the
// helper's output ("ID ..." or "ERR ...") and its exit code. It needs root.
// api is "go-spiffe" or "mesh" (see helperAPIEnv).
func runWorkloadAs(ctx context.Context, t testing.TB, uid int, addr, api string, timeout time.Duration) (string, int) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("running a workload under another uid needs root")
	}
	// The go test work dir is private to root: copy the binary where the
	// other uid can run it.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "spirew")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "workload")
	if err := copyFile(self, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout+30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Dir = dir
	cmd.Env = []string{
		"PATH=/usr/bin:/bin",
		"HOME=" + dir,
		helperEnv + "=" + timeout.String(),
		helperAPIEnv + "=" + api,
		workloadapi.SocketEnv + "=" + addr,
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	out, err := cmd.CombinedOutput()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("run workload as uid %d: %v: %s", uid, err, out)
		}
		code = ee.ExitCode()
	}
	return strings.TrimSpace(string(out)), code
}

func copyFile(from, to string, mode os.FileMode) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
