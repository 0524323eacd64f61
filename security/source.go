package security

import (
	"crypto/x509"
	"fmt"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Source is where a service gets its identity: its own X.509-SVID, and the
// trust bundles it verifies peers against. Every identity source in this
// package implements it, as does go-spiffe's *workloadapi.X509Source.
// Implementations must be safe for concurrent use and return the current
// SVID on every call, so new handshakes pick up rotated certificates.
//
// Close stops what the source runs in the background (a Workload API
// stream, file or Consul watches, rotation) and releases what it holds; it
// is safe to call more than once. The mesh never closes a source it is
// given: whoever made it closes it once the servers and clients using it
// are done, which code that picks a source at run time can do through this
// interface.
type Source interface {
	x509svid.Source
	x509bundle.Source
	Close() error
}

// ID returns the SPIFFE ID of src's current SVID.
func ID(src Source) (spiffeid.ID, error) {
	svid, err := src.GetX509SVID()
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("security: reading own SVID: %w", err)
	}
	return svid.ID, nil
}

// notifier hands out a channel that is closed on the next update, so any
// number of watchers can wait for a change without registering callbacks.
type notifier struct {
	mu sync.Mutex
	ch chan struct{}
}

func (n *notifier) changed() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ch == nil {
		n.ch = make(chan struct{})
	}
	return n.ch
}

func (n *notifier) notify() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ch != nil {
		close(n.ch)
		n.ch = nil
	}
}

// staticState is an SVID and bundle set held under a lock; the file and dev
// sources swap it on every rotation.
type staticState struct {
	mu      sync.RWMutex
	svid    *x509svid.SVID
	bundles *x509bundle.Set
	updates notifier
}

func (s *staticState) set(svid *x509svid.SVID, bundles *x509bundle.Set) {
	s.mu.Lock()
	s.svid, s.bundles = svid, bundles
	s.mu.Unlock()
	s.updates.notify()
}

func (s *staticState) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.svid == nil {
		return nil, fmt.Errorf("security: no X.509-SVID yet")
	}
	return s.svid, nil
}

func (s *staticState) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.bundles == nil {
		return nil, fmt.Errorf("security: no trust bundle yet")
	}
	return s.bundles.GetX509BundleForTrustDomain(td)
}

// Changed returns a channel that is closed at the next SVID or bundle update.
func (s *staticState) Changed() <-chan struct{} { return s.updates.changed() }

func leafOf(svid *x509svid.SVID) *x509.Certificate { return svid.Certificates[0] }
