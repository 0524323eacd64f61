package security

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/gridmesh/gridmesh/internal/consulwatch"
)

// ConsulConfig configures NewConsulSource.
type ConsulConfig struct {
	// Service is the Consul service name whose Connect leaf certificate
	// the source presents: its SPIFFE ID is Consul's
	// spiffe://<cluster-id>.consul/ns/<ns>/dc/<dc>/svc/<Service>.
	// Required. The service need not be registered.
	Service string
	// API is the Consul client configuration. Default: api.DefaultConfig(),
	// which reads Consul's own environment: CONSUL_HTTP_ADDR (default
	// 127.0.0.1:8500), CONSUL_HTTP_TOKEN, CONSUL_HTTP_SSL, CONSUL_CACERT,
	// CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY and the others it documents.
	// The token needs service:write on Service (Consul's rule for leaf
	// certificates) when ACLs are on.
	API *api.Config
	// Logger receives errors talking to the agent (the source keeps its
	// last certificate and bundle meanwhile) and rotations. Default: silent.
	Logger *slog.Logger
}

// ConsulSource is a Source fed by the Connect CA of a Consul agent: its
// SVID is the agent's leaf certificate for one service
// (/v1/agent/connect/ca/leaf/<service>) and its trust bundle the Connect
// CA roots (/v1/agent/connect/ca/roots), active and rotated-out, under
// the cluster's trust domain. Both are followed with blocking queries, so
// renewals and CA rotations arrive without polling; while the agent is
// unreachable the last ones stay in force. Safe for concurrent use;
// Close stops the watches.
//
// After a CA rotation the new root is in the bundle at once (Consul
// cross-signs it, and keeps the old root in the list while leaves signed
// by it live, so old and new leaves verify everywhere), and the source
// asks the agent to re-sign its leaf at once. Consul 1.14's agent does so
// unless a blocking query for the same leaf is open (one of the source's
// own in the last 40% of the leaf's life, or another client's): then it
// hands the new leaf out after a random delay of up to 30 seconds, to
// spread the signing load on its servers (caChangeJitterWindow in its
// leaf cache; not configurable).
type ConsulSource struct {
	staticState
	cfg    ConsulConfig
	addr   string
	client *api.Client
	owned  *http.Client // closed by Close when the source made it
	logger *slog.Logger

	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once

	ready   chan struct{} // closed once an SVID and a bundle are known
	rootsIn chan struct{} // a roots answer arrived (buffered, 1)

	mu       sync.Mutex // taken before staticState.mu
	leaf     *x509svid.SVID
	roots    *consulRoots
	bundles  *x509bundle.Set
	active   [][]byte // key IDs that sign leaves under the active root
	lastErr  error
	readyHit bool
}

// NewConsulSource starts following the agent's leaf certificate for
// cfg.Service and its CA roots, and blocks until it has both. When ctx
// ends first, or after 30 seconds if ctx has no deadline, it
// fails with an error naming the agent address, the service and the last
// error the agent gave.
func NewConsulSource(ctx context.Context, cfg ConsulConfig) (*ConsulSource, error) {
	if cfg.Service == "" {
		return nil, errors.New("security: ConsulConfig.Service is empty: give the Consul service name whose Connect certificate to use")
	}
	// A client made here (from api.DefaultConfig, or from a config with
	// neither HttpClient nor Transport) is ours, so Close closes its idle
	// connections. api.NewClient sets up TLS from the config and
	// Consul's environment.
	var conf api.Config
	ours := cfg.API == nil
	if ours {
		conf = *api.DefaultConfig()
	} else {
		conf = *cfg.API
		ours = conf.HttpClient == nil && conf.Transport == nil
	}
	client, err := api.NewClient(&conf)
	if err != nil {
		return nil, fmt.Errorf("security: Consul client for %s: %w", conf.Address, err)
	}
	var owned *http.Client
	if ours {
		owned = conf.HttpClient
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultIdentityWait)
		defer cancel()
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	wctx, cancel := context.WithCancel(context.Background())
	s := &ConsulSource{
		cfg:     cfg,
		addr:    conf.Address,
		client:  client,
		owned:   owned,
		logger:  logger.With("component", "consul-identity", "service", cfg.Service),
		cancel:  cancel,
		ready:   make(chan struct{}),
		rootsIn: make(chan struct{}, 1),
	}
	s.wg.Add(2)
	go s.watchRoots(wctx)
	go s.watchLeaf(wctx)
	select {
	case <-s.ready:
		return s, nil
	case <-ctx.Done():
		s.mu.Lock()
		last := s.lastErr
		s.mu.Unlock()
		_ = s.Close()
		msg := fmt.Sprintf("security: no Connect leaf certificate for service %q and CA roots from the Consul agent at %s before the deadline: check that the agent runs there (CONSUL_HTTP_ADDR), that Connect is enabled, and that the token (CONSUL_HTTP_TOKEN) has service:write on %q", cfg.Service, conf.Address, cfg.Service)
		if last != nil {
			return nil, fmt.Errorf("%s: %w (last error: %v)", msg, ctx.Err(), last)
		}
		return nil, fmt.Errorf("%s: %w", msg, ctx.Err())
	}
}

// Close stops following the agent; the last SVID and bundle stay
// readable. It is safe to call more than once.
func (s *ConsulSource) Close() error {
	s.once.Do(func() {
		s.cancel()
		s.wg.Wait()
		if s.owned != nil {
			s.owned.CloseIdleConnections()
		}
	})
	return nil
}

// watchRoots follows /v1/agent/connect/ca/roots.
func (s *ConsulSource) watchRoots(ctx context.Context) {
	defer s.wg.Done()
	raw := s.client.Raw()
	follow(ctx, s, "CA roots", func(ctx context.Context, index uint64) (uint64, error) {
		// Consul's default wait (5 minutes): roots change rarely and the
		// agent answers at once when they do.
		q := (&api.QueryOptions{WaitIndex: index}).WithContext(ctx)
		// Raw: consul/api's CARoot leaves out IntermediateCerts and
		// ExternalTrustDomain.
		var roots consulRoots
		meta, err := raw.Query("/v1/agent/connect/ca/roots", &roots, q)
		if err != nil {
			return 0, err
		}
		if err := s.setRoots(&roots); err != nil {
			return 0, err
		}
		return meta.LastIndex, nil
	})
}

// watchLeaf follows /v1/agent/connect/ca/leaf/<service>.
//
// Consul's agent serves leaves from a cache. While a blocking query for a
// leaf is outstanding, the agent holds a fetch open that, after a CA
// rotation, hands out the re-signed leaf only at a random time up to 30s
// later; with no fetch open, a non-blocking query re-signs at once a leaf
// the active root did not sign. So the source asks with a non-blocking
// query when the roots change under its leaf, and keeps a blocking query
// open only from the leaf's renewal point on (60% of its lifetime, where
// the agent starts renewing), so that renewals arrive as soon as the agent
// makes them. If another client of the agent holds a fetch open, the
// non-blocking answer is the old leaf, and the source waits with a
// blocking query for the agent's re-signed one.
func (s *ConsulSource) watchLeaf(ctx context.Context) {
	defer s.wg.Done()
	agent := s.client.Agent()
	// The agent may answer a non-blocking query with the old leaf for a
	// moment after the roots change: its leaf cache reads the roots from
	// a cache entry of its own, refreshed apart from the one the roots
	// watch reads. So a stale leaf is asked for again a few times, 50ms
	// doubling to 800ms, before the source waits with a blocking query.
	const resignTries = 5
	var triedFor []byte // the stale leaf the tries are for
	tries := 0
	follow(ctx, s, "leaf certificate", func(ctx context.Context, index uint64) (uint64, error) {
		s.mu.Lock()
		leaf, stale := s.leaf, s.staleLocked()
		s.mu.Unlock()
		if stale && !bytes.Equal(triedFor, leaf.Certificates[0].Raw) {
			triedFor, tries = leaf.Certificates[0].Raw, 0
		}
		wait := index
		switch {
		case leaf == nil:
			wait = 0
		case stale && tries < resignTries:
			if tries > 0 {
				t := time.NewTimer(50 * time.Millisecond << (tries - 1))
				defer t.Stop()
				select {
				case <-ctx.Done():
					return index, nil
				case <-t.C:
				}
			}
			tries++
			wait = 0
		case stale:
			// The agent kept the old leaf: block until it re-signs.
		default:
			renew := renewalPoint(leaf.Certificates[0])
			if d := time.Until(renew); d > 0 {
				t := time.NewTimer(d)
				defer t.Stop()
				select {
				case <-ctx.Done():
					return index, nil
				case <-s.rootsIn:
					return index, nil // look again: the roots may have moved
				case <-t.C:
				}
			}
		}
		q := (&api.QueryOptions{WaitIndex: wait}).WithContext(ctx)
		got, meta, err := agent.ConnectCALeaf(s.cfg.Service, q)
		if err != nil {
			return 0, err
		}
		if err := s.setLeaf(got); err != nil {
			return 0, err
		}
		if wait == 0 {
			// A non-blocking answer's index may be the old leaf's; keep
			// ours so the next query blocks past it.
			return max(meta.LastIndex, index), nil
		}
		return meta.LastIndex, nil
	})
}

// renewalPoint is when Consul's agent starts renewing a leaf: 60% into its
// lifetime (agent/cache-types/connect_ca_leaf.go, calculateSoftExpiry).
func renewalPoint(c *x509.Certificate) time.Time {
	return c.NotBefore.Add(c.NotAfter.Sub(c.NotBefore) * 6 / 10)
}

// staleLocked reports whether the current leaf was signed by a key other
// than the active root's (or its intermediates'): the CA rotated and the
// agent has not re-signed it yet. s.mu is held.
func (s *ConsulSource) staleLocked() bool {
	if s.leaf == nil || s.active == nil {
		return false
	}
	aki := s.leaf.Certificates[0].AuthorityKeyId
	for _, ski := range s.active {
		if bytes.Equal(aki, ski) {
			return false
		}
	}
	return true
}

// follow runs fetch as a blocking query loop (consulwatch.Run: Consul's
// index rules, backoff of 100ms doubling to 500ms) until ctx ends, recording
// errors for NewConsulSource's message and the logger.
func follow(ctx context.Context, s *ConsulSource, what string, fetch consulwatch.Fetch) {
	_ = consulwatch.Run(ctx, consulwatch.Backoff{}, fetch, consulwatch.Hooks{
		OnError: func(err error, attempt int, retryIn time.Duration) {
			s.mu.Lock()
			s.lastErr = fmt.Errorf("%s: %w", what, err)
			s.mu.Unlock()
			s.logger.Warn("consul agent: keeping the last "+what, "addr", s.addr, "err", err, "attempt", attempt, "retry_in", retryIn)
		},
		OnRecover: func() { s.logger.Info("consul agent answers again", "addr", s.addr, "what", what) },
	}, nil)
}

// setRoots installs a new roots answer as the trust bundle.
func (s *ConsulSource) setRoots(roots *consulRoots) error {
	td, err := spiffeid.TrustDomainFromString(roots.TrustDomain)
	if err != nil {
		return fmt.Errorf("CA roots name trust domain %q: %w", roots.TrustDomain, err)
	}
	bundles := map[spiffeid.TrustDomain]*x509bundle.Bundle{td: x509bundle.New(td)}
	var active [][]byte
	for _, r := range roots.Roots {
		certs, err := parsePEMCerts(r.RootCert)
		if err != nil || len(certs) == 0 {
			return fmt.Errorf("CA root %s: no certificate in RootCertPEM: %v", r.ID, err)
		}
		// Every root (the active one and those rotated out, which still
		// sign live leaves) is trusted in the cluster's trust domain, and
		// also in the one it was made under if the domain changed since.
		bundles[td].AddX509Authority(certs[0])
		if ext, err := spiffeid.TrustDomainFromString(r.ExternalTrustDomain); err == nil && ext != td {
			if bundles[ext] == nil {
				bundles[ext] = x509bundle.New(ext)
			}
			bundles[ext].AddX509Authority(certs[0])
		}
		if r.Active {
			// Leaves under the active root are signed by its key, or by
			// an intermediate's (a provider such as Vault's).
			active = append(active, certs[0].SubjectKeyId)
			for _, p := range r.IntermediateCerts {
				inter, err := parsePEMCerts(p)
				if err != nil {
					return fmt.Errorf("CA root %s: intermediate: %w", r.ID, err)
				}
				for _, c := range inter {
					active = append(active, c.SubjectKeyId)
				}
			}
		}
	}
	set := x509bundle.NewSet()
	for _, b := range bundles {
		set.Add(b)
	}
	s.mu.Lock()
	changed := s.roots == nil || s.roots.ActiveRootID != roots.ActiveRootID
	s.roots, s.bundles, s.active = roots, set, active
	s.publishLocked()
	s.mu.Unlock()
	select {
	case s.rootsIn <- struct{}{}:
	default:
	}
	if changed {
		s.logger.Info("consul CA roots", "trust_domain", roots.TrustDomain, "active_root", roots.ActiveRootID, "roots", len(roots.Roots))
	}
	return nil
}

// setLeaf installs a leaf answer as the SVID.
func (s *ConsulSource) setLeaf(leaf *api.LeafCert) error {
	svid, err := parseConsulLeaf(leaf)
	if err != nil {
		return fmt.Errorf("leaf certificate for %q: %w", s.cfg.Service, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.leaf != nil && bytes.Equal(s.leaf.Certificates[0].Raw, svid.Certificates[0].Raw) {
		return nil
	}
	s.leaf = svid
	s.publishLocked()
	s.logger.Info("consul leaf certificate", "id", svid.ID, "serial", svid.Certificates[0].SerialNumber, "not_after", svid.Certificates[0].NotAfter)
	return nil
}

// publishLocked hands out the SVID and bundle once both are known; s.mu is
// held, so updates from the two watches are applied in order.
func (s *ConsulSource) publishLocked() {
	if s.leaf == nil || s.bundles == nil {
		return
	}
	s.set(s.leaf, s.bundles)
	if !s.readyHit {
		s.readyHit = true
		close(s.ready)
	}
}

// consulRoots is the agent's /v1/agent/connect/ca/roots answer.
type consulRoots struct {
	ActiveRootID string
	TrustDomain  string // "<cluster-id>.consul"
	Roots        []struct {
		ID                  string
		RootCert            string
		IntermediateCerts   []string
		Active              bool
		ExternalTrustDomain string
	}
}

// parseConsulLeaf turns the agent's leaf answer into an SVID: the leaf and
// any intermediates (a cross-signed root during a rotation) from CertPEM,
// the key from PrivateKeyPEM (SEC 1 "EC PRIVATE KEY", PKCS #1 or PKCS #8).
func parseConsulLeaf(leaf *api.LeafCert) (*x509svid.SVID, error) {
	certs, err := parsePEMCerts(leaf.CertPEM)
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificate in CertPEM")
	}
	var chain []byte
	for _, c := range certs {
		chain = append(chain, c.Raw...)
	}
	block, _ := pem.Decode([]byte(leaf.PrivateKeyPEM))
	if block == nil {
		return nil, errors.New("no PEM block in PrivateKeyPEM")
	}
	var key any
	switch block.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("private key PEM block %q: want EC PRIVATE KEY, RSA PRIVATE KEY or PRIVATE KEY", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	return x509svid.ParseRaw(chain, pkcs8)
}

func parsePEMCerts(s string) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := []byte(s)
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return certs, nil
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
}
