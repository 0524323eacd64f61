// Package xdscert is grpc-go's certificate-provider plugin for the mesh: it
// hands grpc-go's xDS credentials the workload's X.509-SVID and trust bundle
// from a SPIFFE source, so xDS-configured clients and servers use the same
// SVIDs as the mesh core. Importing the package registers the plugin
// (PluginName) with grpc-go.
//
// Two ways to name a source in the bootstrap:
//
//	// A source the process already has (a Workload API X509Source, a dev CA):
//	cp, release := xdscert.Register(src)
//	defer release()
//	rb, _ := xdsbootstrap.NewResolverBuilder(xdsbootstrap.Config{ServerURI: addr, CertProvider: cp})
//
//	// Or let the plugin open the Workload API itself (SPIFFE_ENDPOINT_SOCKET when addr is ""):
//	cp := xdscert.WorkloadAPI("")
//
// The plugin reads the source on every handshake, so rotated SVIDs and
// bundles take effect on the next connection.
package xdscert

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/credentials/tls/certprovider"

	"github.com/gridmesh/gridmesh/internal/xdsbootstrap"
)

// PluginName is the plugin's name in the bootstrap's certificate_providers.
const PluginName = "gridmesh-spiffe"

// Source is what the plugin reads: the workload's SVID and the bundles it
// verifies peers with. go-spiffe's *workloadapi.X509Source and the mesh's
// security sources implement it.
type Source interface {
	x509svid.Source
	x509bundle.Source
}

func init() { certprovider.Register(builder{}) }

var (
	mu      sync.Mutex
	sources = map[string]Source{}
	nextKey int
)

// config is the plugin config in the bootstrap.
type config struct {
	// Source is a key from Register.
	Source string `json:"source,omitempty"`
	// WorkloadAPI is the Workload API address; used when Source is empty.
	// Empty: SPIFFE_ENDPOINT_SOCKET.
	WorkloadAPI string `json:"workload_api,omitempty"`
}

// Register makes src available to the plugin and returns the bootstrap entry
// naming it. Call release when no channel or server built with that
// bootstrap is left; handshakes after release fail. Safe for concurrent use.
func Register(src Source) (cp *xdsbootstrap.CertProvider, release func()) {
	mu.Lock()
	nextKey++
	key := "source-" + strconv.Itoa(nextKey)
	sources[key] = src
	mu.Unlock()
	b, _ := json.Marshal(config{Source: key})
	var once sync.Once
	return &xdsbootstrap.CertProvider{PluginName: PluginName, Config: b}, func() {
		once.Do(func() {
			mu.Lock()
			delete(sources, key)
			mu.Unlock()
		})
	}
}

// WorkloadAPI returns the bootstrap entry that makes the plugin read the
// SPIFFE Workload API at addr ("unix:///run/spire/agent.sock"); "" means
// SPIFFE_ENDPOINT_SOCKET. The plugin opens the source when grpc-go first
// needs it and closes it when grpc-go releases the provider.
func WorkloadAPI(addr string) *xdsbootstrap.CertProvider {
	b, _ := json.Marshal(config{WorkloadAPI: addr})
	return &xdsbootstrap.CertProvider{PluginName: PluginName, Config: b}
}

type builder struct{}

func (builder) Name() string { return PluginName }

func (builder) ParseConfig(c any) (*certprovider.BuildableConfig, error) {
	raw, ok := c.(json.RawMessage)
	if !ok {
		return nil, fmt.Errorf("xdscert: config is %T, want JSON", c)
	}
	var cfg config
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &cfg); err != nil {
			return nil, fmt.Errorf("xdscert: config %s: %w", raw, err)
		}
	}
	if cfg.Source != "" {
		mu.Lock()
		_, ok := sources[cfg.Source]
		mu.Unlock()
		if !ok {
			return nil, fmt.Errorf("xdscert: source %q is not registered in this process (xdscert.Register)", cfg.Source)
		}
	}
	canon, _ := json.Marshal(cfg)
	return certprovider.NewBuildableConfig(PluginName, canon, func(certprovider.BuildOptions) certprovider.Provider {
		if cfg.Source != "" {
			return &provider{lookup: func(context.Context) (Source, error) {
				mu.Lock()
				defer mu.Unlock()
				src, ok := sources[cfg.Source]
				if !ok {
					return nil, fmt.Errorf("xdscert: source %q was released", cfg.Source)
				}
				return src, nil
			}}
		}
		return newWorkloadAPIProvider(cfg.WorkloadAPI)
	}), nil
}

// provider turns the current SVID and bundle into grpc-go key material.
type provider struct {
	lookup  func(ctx context.Context) (Source, error)
	closeFn func()

	mu     sync.Mutex
	last   *x509svid.SVID
	bundle *x509bundle.Bundle
	km     *certprovider.KeyMaterial
}

// KeyMaterial is called by grpc-go on every handshake.
func (p *provider) KeyMaterial(ctx context.Context) (*certprovider.KeyMaterial, error) {
	src, err := p.lookup(ctx)
	if err != nil {
		return nil, err
	}
	svid, err := src.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("xdscert: get SVID: %w", err)
	}
	bundle, err := src.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
	if err != nil {
		return nil, fmt.Errorf("xdscert: get bundle for %s: %w", svid.ID.TrustDomain(), err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.km != nil && p.last == svid && p.bundle.Equal(bundle) {
		return p.km, nil
	}
	cert := tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	pool := x509.NewCertPool()
	for _, c := range bundle.X509Authorities() {
		pool.AddCert(c)
	}
	p.last, p.bundle = svid, bundle
	p.km = &certprovider.KeyMaterial{Certs: []tls.Certificate{cert}, Roots: pool}
	return p.km, nil
}

func (p *provider) Close() {
	if p.closeFn != nil {
		p.closeFn()
	}
}

// newWorkloadAPIProvider opens an X509Source in the background; KeyMaterial
// waits for it (bounded by the handshake's context).
func newWorkloadAPIProvider(addr string) *provider {
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	var (
		src    *workloadapi.X509Source
		srcErr error
		wg     sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(ready)
		var opts []workloadapi.X509SourceOption
		if addr != "" {
			opts = append(opts, workloadapi.WithClientOptions(workloadapi.WithAddr(addr)))
		}
		src, srcErr = workloadapi.NewX509Source(ctx, opts...)
	}()
	return &provider{
		lookup: func(hctx context.Context) (Source, error) {
			select {
			case <-ready:
			case <-hctx.Done():
				return nil, fmt.Errorf("xdscert: waiting for the Workload API at %q: %w", addr, hctx.Err())
			}
			if srcErr != nil {
				if errors.Is(srcErr, context.Canceled) {
					return nil, errors.New("xdscert: provider closed")
				}
				return nil, fmt.Errorf("xdscert: Workload API at %q: %w", addr, srcErr)
			}
			return src, nil
		},
		closeFn: func() {
			cancel()
			wg.Wait()
			if src != nil {
				_ = src.Close()
			}
		},
	}
}
