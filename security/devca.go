package security

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// DevCAConfig configures a DevCA. The zero value is usable.
type DevCAConfig struct {
	// SVIDTTL is the lifetime of issued SVIDs. Default 1 hour.
	SVIDTTL time.Duration
	// CATTL is the lifetime of the CA certificate. Default 30 days.
	CATTL time.Duration
	// Now returns the current time; tests set it to issue certificates in
	// the past or the future. Default time.Now.
	Now func() time.Time
}

// DevCA is an in-process certificate authority for development and tests: it
// issues short-lived X.509-SVIDs for one trust domain. It is not for
// production (the key lives in memory); production identities come from a
// SPIRE agent through the Workload API. Safe for concurrent use.
type DevCA struct {
	td  spiffeid.TrustDomain
	cfg DevCAConfig

	mu      sync.RWMutex
	key     crypto.Signer
	cert    *x509.Certificate
	bundle  *x509bundle.Bundle // every CA certificate still trusted
	updates notifier
}

// NewDevCA creates a CA for trust domain td with a fresh P-256 key.
func NewDevCA(td spiffeid.TrustDomain, cfg DevCAConfig) (*DevCA, error) {
	if td.IsZero() {
		return nil, errors.New("devca: trust domain is empty: pass e.g. spiffeid.RequireTrustDomainFromString(\"example.org\")")
	}
	if cfg.SVIDTTL <= 0 {
		cfg.SVIDTTL = time.Hour
	}
	if cfg.CATTL <= 0 {
		cfg.CATTL = 30 * 24 * time.Hour
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	ca := &DevCA{td: td, cfg: cfg, bundle: x509bundle.New(td)}
	if err := ca.rotateCA(); err != nil {
		return nil, err
	}
	return ca, nil
}

// rotateCA replaces the signing key and certificate. The new CA certificate
// joins the bundle and the old ones stay in it, so SVIDs issued before the
// rotation keep verifying until dropOldCAs is called.
func (ca *DevCA) rotateCA() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("devca: generating CA key: %w", err)
	}
	now := ca.cfg.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"gridmesh dev CA"}, CommonName: ca.td.Name()},
		URIs:                  []*url.URL{ca.td.ID().URL()},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(ca.cfg.CATTL),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("devca: creating CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("devca: parsing CA certificate: %w", err)
	}
	ca.mu.Lock()
	ca.key, ca.cert = key, cert
	ca.bundle = x509bundle.FromX509Authorities(ca.td, append(ca.bundle.X509Authorities(), cert))
	ca.mu.Unlock()
	ca.updates.notify()
	return nil
}

// dropOldCAs removes every CA certificate but the current one from the
// bundle: SVIDs signed by earlier CAs stop verifying.
func (ca *DevCA) dropOldCAs() {
	ca.mu.Lock()
	ca.bundle = x509bundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.cert})
	ca.mu.Unlock()
	ca.updates.notify()
}

// currentBundle returns the CA's current trust bundle.
func (ca *DevCA) currentBundle() *x509bundle.Bundle {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	return ca.bundle
}

// bundleChanged returns a channel that is closed when the bundle next changes.
func (ca *DevCA) bundleChanged() <-chan struct{} { return ca.updates.changed() }

// issue signs a new X.509-SVID for id, valid for ttl (the configured SVIDTTL
// when ttl is 0), with a fresh P-256 key.
func (ca *DevCA) issue(id spiffeid.ID, ttl time.Duration) (*x509svid.SVID, error) {
	if !id.MemberOf(ca.td) {
		return nil, fmt.Errorf("devca: %q is not in trust domain %q", id, ca.td)
	}
	if ttl <= 0 {
		ttl = ca.cfg.SVIDTTL
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("devca: generating key: %w", err)
	}
	now := ca.cfg.Now()
	ca.mu.RLock()
	signer, parent := ca.key, ca.cert
	ca.mu.RUnlock()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"gridmesh"}},
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             now.Add(-10 * time.Second),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	if tmpl.NotAfter.After(parent.NotAfter) {
		tmpl.NotAfter = parent.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("devca: signing SVID for %q: %w", id, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("devca: parsing SVID: %w", err)
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}, nil
}

// Source returns an identity source for id that holds an SVID from ca and
// replaces it at half its lifetime, like a SPIRE agent does, and follows
// changes to the CA's bundle. Close stops the rotation.
func (ca *DevCA) Source(id spiffeid.ID) (*DevSource, error) {
	svid, err := ca.issue(id, 0)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &DevSource{ca: ca, id: id, cancel: cancel, done: make(chan struct{})}
	s.set(svid, x509bundle.NewSet(ca.currentBundle()))
	go s.rotate(ctx)
	return s, nil
}

// DevSource is a Source backed by a DevCA that rotates its SVID at half-life.
// Safe for concurrent use.
type DevSource struct {
	staticState
	ca     *DevCA
	id     spiffeid.ID
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

func (s *DevSource) rotate(ctx context.Context) {
	defer close(s.done)
	bundle := s.ca.currentBundle()
	svid, _ := s.GetX509SVID()
	rotateAt := halfLife(svid)
	for {
		changed := s.ca.bundleChanged()
		if b := s.ca.currentBundle(); b != bundle {
			bundle = b
			svid, _ := s.GetX509SVID()
			s.set(svid, x509bundle.NewSet(bundle))
		}
		timer := time.NewTimer(time.Until(rotateAt))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-changed:
			timer.Stop()
			continue
		case <-timer.C:
		}
		next, err := s.ca.issue(s.id, 0)
		if err != nil {
			// Issuance only fails when the CA itself is broken; try again
			// in a second rather than spin.
			rotateAt = time.Now().Add(time.Second)
			continue
		}
		rotateAt = halfLife(next)
		bundle = s.ca.currentBundle()
		s.set(next, x509bundle.NewSet(bundle))
	}
}

// halfLife is when half of svid's remaining validity, counted from now, has
// passed: when a SPIRE agent would rotate an SVID it has just received.
func halfLife(svid *x509svid.SVID) time.Time {
	return time.Now().Add(time.Until(leafOf(svid).NotAfter) / 2)
}

// Close stops rotation; the last SVID and bundle stay readable. It is safe
// to call more than once.
func (s *DevSource) Close() error {
	s.once.Do(func() {
		s.cancel()
		<-s.done
	})
	return nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(fmt.Sprintf("devca: reading random serial: %v", err))
	}
	return n
}
