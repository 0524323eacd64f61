// Package pki makes certificates for tests, including the malformed ones a
// real CA would never issue, so tests can check that the mesh refuses them.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// CA is a test certificate authority for one trust domain.
type CA struct {
	TrustDomain spiffeid.TrustDomain
	Cert        *x509.Certificate
	Key         crypto.Signer
}

// NewCA returns a self-signed CA for trust domain td.
func NewCA(t testing.TB, td string) *CA {
	t.Helper()
	trust := spiffeid.RequireTrustDomainFromString(td)
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "test CA " + td},
		URIs:                  []*url.URL{trust.ID().URL()},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	return &CA{TrustDomain: trust, Cert: sign(t, tmpl, tmpl, key, key), Key: key}
}

// Leaf describes a certificate to issue. Zero fields take working defaults:
// valid from an hour ago for an hour, a client and server leaf, no URIs.
type Leaf struct {
	URIs       []string
	NotBefore  time.Time
	NotAfter   time.Time
	IsCA       bool
	SelfSigned bool
}

// Issue signs leaf with ca (or self-signs it) and returns it with its key as
// a tls.Certificate.
func (ca *CA) Issue(t testing.TB, leaf Leaf) tls.Certificate {
	t.Helper()
	key := newKey(t)
	if leaf.NotBefore.IsZero() {
		leaf.NotBefore = time.Now().Add(-time.Hour)
	}
	if leaf.NotAfter.IsZero() {
		leaf.NotAfter = time.Now().Add(time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		NotBefore:             leaf.NotBefore,
		NotAfter:              leaf.NotAfter,
		BasicConstraintsValid: true,
		IsCA:                  leaf.IsCA,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	if leaf.IsCA {
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	}
	for _, u := range leaf.URIs {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatalf("pki: URI %q: %v", u, err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	parent, signer := ca.Cert, ca.Key
	if leaf.SelfSigned {
		parent, signer = tmpl, key
	}
	cert := sign(t, tmpl, parent, key, signer)
	return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
}

// SVID issues a valid X.509-SVID for id.
func (ca *CA) SVID(t testing.TB, id string) *x509svid.SVID {
	t.Helper()
	c := ca.Issue(t, Leaf{URIs: []string{id}})
	return &x509svid.SVID{ID: spiffeid.RequireFromString(id), Certificates: []*x509.Certificate{c.Leaf}, PrivateKey: c.PrivateKey.(crypto.Signer)}
}

// Bundle returns the CA's trust bundle.
func (ca *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.TrustDomain, []*x509.Certificate{ca.Cert})
}

// Source is a fixed identity: one SVID and a set of bundles.
type Source struct {
	SVID    *x509svid.SVID
	Bundles *x509bundle.Set
}

// NewSource returns a Source holding an SVID for id from ca, trusting ca and
// any extra bundles.
func (ca *CA) NewSource(t testing.TB, id string, extra ...*x509bundle.Bundle) *Source {
	return &Source{SVID: ca.SVID(t, id), Bundles: x509bundle.NewSet(append([]*x509bundle.Bundle{ca.Bundle()}, extra...)...)}
}

// GetX509SVID implements x509svid.Source.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) { return s.SVID, nil }

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.Bundles.GetX509BundleForTrustDomain(td)
}

// Close implements security.Source: a fixed identity runs nothing, so
// there is nothing to stop.
func (s *Source) Close() error { return nil }

func newKey(t testing.TB) crypto.Signer {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("pki: key: %v", err)
	}
	return key
}

func sign(t testing.TB, tmpl, parent *x509.Certificate, key, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		t.Fatalf("pki: sign: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("pki: parse: %v", err)
	}
	return cert
}
