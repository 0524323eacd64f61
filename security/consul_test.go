package security_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/gridmesh/gridmesh/internal/testutil/consul"
	"github.com/gridmesh/gridmesh/security"
)

func newConsulSource(t *testing.T, a *consul.Agent, service string) *security.ConsulSource {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src, err := security.NewConsulSource(ctx, security.ConsulConfig{Service: service, API: &api.Config{Address: a.Addr(), Token: a.ManagementToken()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	return src
}

// rootSKI returns the subject key ID of the CA root with ID id.
func rootSKI(t *testing.T, roots *api.CARootList, id string) []byte {
	t.Helper()
	for _, r := range roots.Roots {
		if r.ID == id {
			block, _ := pem.Decode([]byte(r.RootCertPEM))
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			return c.SubjectKeyId
		}
	}
	t.Fatalf("no root %s in %d roots", id, len(roots.Roots))
	return nil
}

// TestConsulSourceServesConsulIdentity: the source's SVID is the agent's
// leaf for the service, with Consul's SPIFFE ID (the roots' trust domain,
// which already ends in ".consul", then /ns/default/dc/<dc>/svc/<name>),
// and it verifies against the source's own bundle. CONSUL_HTTP_ADDR is
// honoured when no API config is given. Close is safe twice and keeps
// the last SVID readable.
func TestConsulSourceServesConsulIdentity(t *testing.T) {
	a := consul.Start(t, consul.WithDatacenter("east"))
	roots := a.CARoots(t)
	t.Setenv("CONSUL_HTTP_ADDR", a.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src, err := security.NewConsulSource(ctx, security.ConsulConfig{Service: "trading"})
	if err != nil {
		t.Fatal(err)
	}
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	want := "spiffe://" + roots.TrustDomain + "/ns/default/dc/east/svc/trading"
	if !strings.HasSuffix(roots.TrustDomain, ".consul") {
		t.Errorf("roots trust domain %q does not end in .consul", roots.TrustDomain)
	}
	if svid.ID.String() != want {
		t.Errorf("SVID ID = %s, want %s", svid.ID, want)
	}
	if _, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString(roots.TrustDomain)); err != nil {
		t.Errorf("no bundle for the cluster's trust domain %s: %v", roots.TrustDomain, err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, src); err != nil {
		t.Errorf("SVID does not verify against the source's bundle: %v", err)
	}
	if !bytes.Equal(svid.Certificates[0].AuthorityKeyId, rootSKI(t, roots, roots.ActiveRootID)) {
		t.Error("leaf is not signed by the active root")
	}
	for i := range 2 {
		if err := src.Close(); err != nil {
			t.Errorf("Close #%d: %v", i+1, err)
		}
	}
	if _, err := src.GetX509SVID(); err != nil {
		t.Errorf("after Close: %v", err)
	}
}

// TestConsulSourceConstructionErrors: a missing service is refused at
// once; an agent that is not there fails at ctx's deadline with the
// address and the service named; a token without service:write on an
// agent with ACLs fails with the agent's permission error.
func TestConsulSourceConstructionErrors(t *testing.T) {
	a := consul.Start(t, consul.WithACLs())
	weak := a.CreateToken(t, "reader", `service "trading" { policy = "read" }`)
	tests := []struct {
		name string
		cfg  security.ConsulConfig
		want []string
	}{
		{"no service", security.ConsulConfig{API: &api.Config{Address: a.Addr()}},
			[]string{"security: ConsulConfig.Service is empty"}},
		{"no agent", security.ConsulConfig{Service: "trading", API: &api.Config{Address: "127.0.0.1:1"}},
			[]string{`for service "trading"`, "Consul agent at 127.0.0.1:1 before the deadline", "context deadline exceeded", "connection refused"}},
		{"token without service:write", security.ConsulConfig{Service: "trading", API: &api.Config{Address: a.Addr(), Token: weak}},
			[]string{`service:write on "trading"`, a.Addr(), "Permission denied"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			src, err := security.NewConsulSource(ctx, tt.cfg)
			if err == nil {
				src.Close()
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// TestConsulSourceFollowsCARotation: after a rotation forced through
// /v1/connect/ca/configuration, the bundle has the old and the new root
// (the old one still signs live leaves), and the source hands out a leaf
// signed by the new root: at once when it is the agent's only client for
// the leaf, within Consul's 30-second spreading window when another
// client holds a blocking query for the same leaf open (the agent then
// re-signs only when that query's fetch ends). The test logs how long each
// took.
func TestConsulSourceFollowsCARotation(t *testing.T) {
	for _, other := range []bool{false, true} {
		name := "alone"
		if other {
			name = "another blocking watcher"
		}
		t.Run(name, func(t *testing.T) {
			a := consul.Start(t)
			src := newConsulSource(t, a, "trading")
			if other {
				holdBlockingLeafQuery(t, a, "trading")
			}
			before := a.CARoots(t)
			oldSKI := rootSKI(t, before, before.ActiveRootID)
			start := time.Now()
			newRoot := a.RotateCA(t)
			after := a.CARoots(t)
			newSKI := rootSKI(t, after, newRoot)
			td := spiffeid.RequireTrustDomainFromString(after.TrustDomain)

			deadline := time.Now().Add(45 * time.Second)
			for {
				svid, err := src.GetX509SVID()
				if err != nil {
					t.Fatal(err)
				}
				if bytes.Equal(svid.Certificates[0].AuthorityKeyId, newSKI) {
					t.Logf("leaf signed by the new root %v after the rotation", time.Since(start).Round(time.Millisecond))
					if _, _, err := x509svid.Verify(svid.Certificates, src); err != nil {
						t.Errorf("new leaf does not verify: %v", err)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("leaf still signed by the old root 45s after the rotation")
				}
				select {
				case <-src.Changed():
				case <-time.After(100 * time.Millisecond):
				}
			}
			b, err := src.GetX509BundleForTrustDomain(td)
			if err != nil {
				t.Fatal(err)
			}
			var haveOld, haveNew bool
			for _, c := range b.X509Authorities() {
				haveOld = haveOld || bytes.Equal(c.SubjectKeyId, oldSKI)
				haveNew = haveNew || bytes.Equal(c.SubjectKeyId, newSKI)
			}
			if !haveOld || !haveNew {
				t.Errorf("bundle has old root %v, new root %v; want both", haveOld, haveNew)
			}
		})
	}
}

// holdBlockingLeafQuery keeps a blocking query for service's leaf open on
// a (as a sidecar or a second instance would) until the test ends.
func holdBlockingLeafQuery(t *testing.T, a *consul.Agent, service string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	agent := a.Client().Agent()
	_, meta, err := agent.ConnectCALeaf(service, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(done)
		index := meta.LastIndex
		for ctx.Err() == nil {
			_, m, err := agent.ConnectCALeaf(service, (&api.QueryOptions{WaitIndex: index}).WithContext(ctx))
			if err == nil {
				index = m.LastIndex
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	// Let the query reach the agent before the test goes on.
	time.Sleep(200 * time.Millisecond)
}

// TestConsulSourceTokenFromEnv: with no API config, the source reads
// CONSUL_HTTP_ADDR and CONSUL_HTTP_TOKEN, so on an agent with ACLs in
// default-deny a service's token from the environment gets its leaf.
func TestConsulSourceTokenFromEnv(t *testing.T) {
	a := consul.Start(t, consul.WithACLs())
	t.Setenv("CONSUL_HTTP_ADDR", a.Addr())
	t.Setenv("CONSUL_HTTP_TOKEN", a.CreateToken(t, "trading", `service "trading" { policy = "write" }`))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src, err := security.NewConsulSource(ctx, security.ConsulConfig{Service: "trading"})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	id, err := security.ID(src)
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://" + a.CARoots(t).TrustDomain + "/ns/default/dc/dc1/svc/trading"; id.String() != want {
		t.Errorf("ID = %s, want %s", id, want)
	}
}
