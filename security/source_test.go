package security_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"

	"github.com/gridmesh/gridmesh/internal/devworkloadapi"
	"github.com/gridmesh/gridmesh/security"
)

func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sec")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func waitChanged(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("no update within 10s")
	}
}

func TestDevSourceRotatesAtHalfLife(t *testing.T) {
	ca, err := security.NewDevCA(td, security.DevCAConfig{SVIDTTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	src, err := ca.Source(id("/w"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	first, _ := src.GetX509SVID()
	waitChanged(t, src.Changed())
	second, _ := src.GetX509SVID()
	if first.Certificates[0].SerialNumber.Cmp(second.Certificates[0].SerialNumber) == 0 {
		t.Fatal("SVID did not change")
	}
	if _, _, err := x509svid.Verify(second.Certificates, src); err != nil {
		t.Errorf("rotated SVID does not verify: %v", err)
	}
	if err := src.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestDevCARotationKeepsOldSVIDsUntilDropped(t *testing.T) {
	ca, err := security.NewDevCA(td, security.DevCAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	old, err := security.Issue(ca, id("/w"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := security.RotateCA(ca); err != nil {
		t.Fatal(err)
	}
	fresh, _ := security.Issue(ca, id("/w"), 0)
	for name, s := range map[string]*x509svid.SVID{"old": old, "fresh": fresh} {
		if _, _, err := x509svid.Verify(s.Certificates, security.Bundle(ca)); err != nil {
			t.Errorf("%s SVID refused after rotation: %v", name, err)
		}
	}
	security.DropOldCAs(ca)
	if _, _, err := x509svid.Verify(old.Certificates, security.Bundle(ca)); err == nil {
		t.Error("old SVID still verifies after DropOldCAs")
	}
}

func TestWorkloadAPISource(t *testing.T) {
	ca, err := security.NewDevCA(td, security.DevCAConfig{SVIDTTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	srv := devworkloadapi.New(ca)
	defer srv.Close()
	dir := shortTempDir(t)
	addr, err := srv.Add(filepath.Join(dir, "w.sock"), id("/w"))
	if err != nil {
		t.Fatal(err)
	}

	t.Run("first SVID and rotation", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		src, err := security.NewWorkloadAPISource(ctx, security.WorkloadAPIConfig{Address: addr, ExpectedID: id("/w")})
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		first, err := src.GetX509SVID()
		if err != nil || first.ID != id("/w") {
			t.Fatalf("SVID %v, %v", first, err)
		}
		if err := src.WaitUntilUpdated(ctx); err != nil {
			t.Fatal(err)
		}
		next, _ := src.GetX509SVID()
		if next.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) == 0 {
			t.Error("rotation did not reach the source")
		}
	})
	t.Run("from SPIFFE_ENDPOINT_SOCKET", func(t *testing.T) {
		t.Setenv("SPIFFE_ENDPOINT_SOCKET", addr)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		src, err := security.NewWorkloadAPISource(ctx, security.WorkloadAPIConfig{})
		if err != nil {
			t.Fatal(err)
		}
		src.Close()
	})
	for _, tc := range []struct {
		name string
		cfg  security.WorkloadAPIConfig
		want []string
	}{
		{"unexpected ID", security.WorkloadAPIConfig{Address: addr, ExpectedID: id("/other")}, []string{addr, "spiffe://example.org/other", "before the deadline"}},
		{"nobody on the socket", security.WorkloadAPIConfig{Address: "unix://" + filepath.Join(dir, "none.sock")}, []string{"none.sock", "any SPIFFE ID", "before the deadline"}},
		{"bad address", security.WorkloadAPIConfig{Address: "tcp://nowhere"}, []string{"tcp://nowhere", "want e.g. unix://"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			start := time.Now()
			_, err := security.NewWorkloadAPISource(ctx, tc.cfg)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if time.Since(start) > 5*time.Second {
				t.Errorf("returned after %v: it should end at the 1s deadline", time.Since(start))
			}
		})
	}
}

func writeSVIDFiles(t *testing.T, dir string, svid *x509svid.SVID, bundle []*x509.Certificate) {
	t.Helper()
	certs, key, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var b []byte
	for _, c := range bundle {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	// Write to temporary names and rename, as secret managers do.
	for name, data := range map[string][]byte{"svid.pem": certs, "key.pem": key, "bundle.pem": b} {
		tmp := filepath.Join(dir, "."+name)
		if err := os.WriteFile(tmp, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFileSourceReloads(t *testing.T) {
	ca, err := security.NewDevCA(td, security.DevCAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	dir := shortTempDir(t)
	first, _ := security.Issue(ca, id("/w"), 0)
	writeSVIDFiles(t, dir, first, security.Bundle(ca).X509Authorities())
	reloadErrs := make(chan error, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src, err := security.NewFileSource(ctx, security.FileConfig{
		CertFile: filepath.Join(dir, "svid.pem"), KeyFile: filepath.Join(dir, "key.pem"), BundleFile: filepath.Join(dir, "bundle.pem"),
		OnReloadError: func(err error) { reloadErrs <- err },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if got, _ := src.GetX509SVID(); got.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0 {
		t.Fatal("did not load the first SVID")
	}

	changed := src.Changed()
	second, _ := security.Issue(ca, id("/w"), 0)
	writeSVIDFiles(t, dir, second, security.Bundle(ca).X509Authorities())
	waitChanged(t, changed)
	if got, _ := src.GetX509SVID(); got.Certificates[0].SerialNumber.Cmp(second.Certificates[0].SerialNumber) != 0 {
		t.Fatal("did not reload the new SVID")
	}

	// A broken write is reported and the last good SVID stays.
	if err := os.WriteFile(filepath.Join(dir, "svid.pem"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-reloadErrs:
		if !strings.Contains(err.Error(), "keeping the last good SVID") {
			t.Errorf("reload error %q does not say the old SVID is kept", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a broken file was not reported")
	}
	if got, _ := src.GetX509SVID(); got.Certificates[0].SerialNumber.Cmp(second.Certificates[0].SerialNumber) != 0 {
		t.Error("a broken file replaced the last good SVID")
	}
}

func TestFileSourceMissingFilesFailAtDeadline(t *testing.T) {
	dir := shortTempDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := security.NewFileSource(ctx, security.FileConfig{CertFile: filepath.Join(dir, "a"), KeyFile: filepath.Join(dir, "b"), BundleFile: filepath.Join(dir, "c")})
	if err == nil || !strings.Contains(err.Error(), "before the deadline") {
		t.Fatalf("err = %v", err)
	}
	if _, err := security.NewFileSource(ctx, security.FileConfig{}); err == nil || !strings.Contains(err.Error(), "FileConfig.") {
		t.Fatalf("empty config err = %v", err)
	}
}

// TestSourcesCloseThroughTheInterface: every identity source is a
// security.Source with Close, so code that picks one at run time closes it
// without knowing which it got. Close stops every goroutine the source
// started, a second Close is harmless, and what the source serves after
// Close is what its doc says. (ConsulSource, which needs a Consul agent,
// is closed twice in TestConsulSourceServesConsulIdentity.)
func TestSourcesCloseThroughTheInterface(t *testing.T) {
	ca, err := security.NewDevCA(td, security.DevCAConfig{SVIDTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	wapi := devworkloadapi.New(ca)
	defer wapi.Close()
	dir := shortTempDir(t)
	addr, err := wapi.Add(filepath.Join(dir, "w.sock"), id("/w"))
	if err != nil {
		t.Fatal(err)
	}
	svid, _ := security.Issue(ca, id("/w"), 0)
	writeSVIDFiles(t, dir, svid, security.Bundle(ca).X509Authorities())

	tests := []struct {
		name string
		open func(context.Context) (security.Source, error)
		// readableAfterClose: the last SVID stays readable (dev, files),
		// or reading fails (go-spiffe's X509Source).
		readableAfterClose bool
	}{
		{"dev CA", func(context.Context) (security.Source, error) { return ca.Source(id("/w")) }, true},
		{"files", func(ctx context.Context) (security.Source, error) {
			return security.NewFileSource(ctx, security.FileConfig{
				CertFile: filepath.Join(dir, "svid.pem"), KeyFile: filepath.Join(dir, "key.pem"), BundleFile: filepath.Join(dir, "bundle.pem"),
			})
		}, true},
		{"Workload API", func(ctx context.Context) (security.Source, error) {
			return security.NewWorkloadAPISource(ctx, security.WorkloadAPIConfig{Address: addr})
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := goleak.IgnoreCurrent()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			src, err := tc.open(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := security.ID(src); err != nil || got != id("/w") {
				t.Fatalf("ID = %v, %v; want %s", got, err, id("/w"))
			}
			for i := range 2 {
				if err := src.Close(); err != nil {
					t.Errorf("Close #%d: %v", i+1, err)
				}
			}
			_, err = src.GetX509SVID()
			if got := err == nil; got != tc.readableAfterClose {
				t.Errorf("GetX509SVID after Close: err = %v, want readable = %v", err, tc.readableAfterClose)
			}
			goleak.VerifyNone(t, before)
		})
	}
}
