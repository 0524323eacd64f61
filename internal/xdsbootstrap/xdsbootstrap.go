// Package xdsbootstrap builds grpc-go's xDS bootstrap in process, so a user
// names the control plane's address and never writes bootstrap JSON.
//
// grpc-go reads its bootstrap from GRPC_XDS_BOOTSTRAP(_CONFIG) for the
// global xds resolver. To avoid process-wide environment, this package hands
// the bootstrap to grpc-go per channel and per server, through grpc-go's
// public (experimental) hooks xds.NewXDSResolverWithConfigForTesting and
// xds.BootstrapContentsForTesting. Each channel and server then has its own
// xDS client and ADS stream, which grpc-go's CSDS does not see; set
// Config.Recorder (internal/xdsstatus) to record what each one holds.
//
//	cp, release := xdscert.Register(svidSource) // or xdscert.WorkloadAPI("")
//	defer release()
//	cfg := xdsbootstrap.Config{ServerURI: "127.0.0.1:15010", CertProvider: cp}
//	dopts, err := xdsbootstrap.DialOptions(cfg, meshCreds)
//	cc, err := grpc.NewClient("xds:///trading", dopts...)
//
//	sopts, err := xdsbootstrap.ServerOptions(cfg, meshServerCreds)
//	srv, err := xds.NewGRPCServer(sopts...)
package xdsbootstrap

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	estats "google.golang.org/grpc/experimental/stats"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/xds"

	"github.com/gridmesh/gridmesh/internal/xdsname"
	"github.com/gridmesh/gridmesh/internal/xdsstatus"
)

const (
	// ServerListenerTemplate is the name template of server-side Listener
	// resources (see xdsname).
	ServerListenerTemplate = xdsname.ServerListenerTemplate
	// CertProviderInstance is the certificate provider instance name that
	// meshd's clusters and server listeners refer to for mTLS.
	CertProviderInstance = xdsname.CertProviderInstance
)

// CertProvider names the grpc-go certificate-provider plugin that supplies
// the workload's identity and trust bundle, and its JSON config. The
// internal/xdscert package returns one from Register and WorkloadAPI.
type CertProvider struct {
	PluginName string
	Config     json.RawMessage
}

// Config is what the bootstrap needs. Only ServerURI is required.
type Config struct {
	// ServerURI is the control plane's address, host:port (meshd defaults
	// to 127.0.0.1:15010) or a gRPC target such as dns:///meshd:15010 or
	// ReplicasTarget's for several replicas. The connection to it uses
	// ChannelCreds.
	ServerURI string
	// ChannelCreds secures the connection to the control plane: mTLS with
	// the workload's SVID, accepting only the control plane's SPIFFE ID
	// (RegisterChannelCreds). Required unless InsecurePlaintext.
	ChannelCreds *ChannelCreds
	// InsecurePlaintext connects to the control plane in plaintext, with
	// no authentication either way: for local debugging only. JSON refuses
	// a config with neither it nor ChannelCreds.
	InsecurePlaintext bool
	// ServerIdentity, for a server, is its SPIFFE ID: it goes into the
	// server listener name template (xdsname.ServerListenerTemplateFor),
	// which meshd serves only to a stream authenticated as that ID.
	// Empty: grpc-go's default template.
	ServerIdentity string
	// NodeID identifies this client to the control plane in logs and config
	// dumps. Default: "gridmesh~<hostname>~<pid>~<random>".
	NodeID string
	// Cluster is the node's cluster, conventionally the service name of
	// the process. Optional.
	Cluster string
	// CertProvider supplies identities for xDS mTLS. Nil: no certificate
	// providers, so any cluster or listener asking for mTLS is refused by
	// grpc-go.
	CertProvider *CertProvider
	// Recorder, when set, records the ADS stream of the xDS client this
	// bootstrap configures (what it received, what it ACKed and NACKed),
	// which grpc-go's own CSDS cannot see for a per-channel client.
	Recorder *xdsstatus.Recorder
	// WrapCredentials, when set, wraps grpc-go's xDS credentials (the mesh
	// adds its own checks of the peer certificate). It must keep their
	// UsesXDS method.
	WrapCredentials func(credentials.TransportCredentials) credentials.TransportCredentials
	// Metrics, when set, records the metrics of the xDS client of each
	// channel built with NewResolverBuilder (or DialOptions), besides the
	// channel's own stats handlers, which grpc-go would otherwise be the
	// only way in: a stats handler costs every call on the channel.
	Metrics estats.MetricsRecorder
}

type bootstrapJSON struct {
	XDSServers             []xdsServer             `json:"xds_servers"`
	Node                   node                    `json:"node"`
	CertificateProviders   map[string]certProvider `json:"certificate_providers,omitempty"`
	ServerListenerTemplate string                  `json:"server_listener_resource_name_template"`
	ClientListenerTemplate string                  `json:"client_default_listener_resource_name_template"`
}

type xdsServer struct {
	ServerURI      string         `json:"server_uri"`
	ChannelCreds   []channelCreds `json:"channel_creds"`
	ServerFeatures []string       `json:"server_features"`
}

type channelCreds struct {
	Type   string          `json:"type"`
	Config json.RawMessage `json:"config,omitempty"`
}

type node struct {
	ID      string `json:"id"`
	Cluster string `json:"cluster,omitempty"`
}

type certProvider struct {
	PluginName string          `json:"plugin_name"`
	Config     json.RawMessage `json:"config,omitempty"`
}

// JSON returns the bootstrap document for c.
func (c Config) JSON() ([]byte, error) {
	if c.ServerURI == "" {
		return nil, errors.New("xdsbootstrap: no control plane address; set it, like 127.0.0.1:15010")
	}
	if !strings.Contains(c.ServerURI, ":///") && !strings.HasPrefix(c.ServerURI, "unix:") {
		_, port, err := net.SplitHostPort(c.ServerURI)
		if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("xdsbootstrap: control plane address %q is not host:port (like 127.0.0.1:15010) or a gRPC target (dns:///meshd:15010)", c.ServerURI)
		}
	}
	id := c.NodeID
	if id == "" {
		id = DefaultNodeID()
	}
	var creds channelCreds
	switch {
	case c.ChannelCreds != nil && c.InsecurePlaintext:
		return nil, errors.New("xdsbootstrap: both ChannelCreds and InsecurePlaintext are set; choose one")
	case c.ChannelCreds != nil:
		creds.Type = ChannelCredsType
		cfg := mtlsCredsConfig{Creds: c.ChannelCreds.key}
		if c.Recorder != nil {
			cfg.Recorder = c.Recorder.ID()
		}
		creds.Config, _ = json.Marshal(cfg)
	case c.InsecurePlaintext:
		creds.Type = "insecure"
		if c.Recorder != nil {
			creds.Type, creds.Config = c.Recorder.ChannelCreds()
		}
	default:
		return nil, errors.New("xdsbootstrap: no credentials for the control plane connection: set Config.ChannelCreds (mTLS with the workload's SVID, RegisterChannelCreds) or, for local debugging only, Config.InsecurePlaintext")
	}
	b := bootstrapJSON{
		XDSServers: []xdsServer{{
			ServerURI:    c.ServerURI,
			ChannelCreds: []channelCreds{creds},
			// ignore_resource_deletion: a listener or cluster missing from a
			// response (a control plane restarted with partial state) does
			// not take down traffic that is flowing.
			ServerFeatures: []string{"xds_v3", "ignore_resource_deletion"},
		}},
		Node:                   node{ID: id, Cluster: c.Cluster},
		ServerListenerTemplate: xdsname.ServerListenerTemplateFor(c.ServerIdentity),
		ClientListenerTemplate: "%s",
	}
	if p := c.CertProvider; p != nil {
		cfg := p.Config
		if len(cfg) == 0 {
			cfg = json.RawMessage("{}")
		}
		b.CertificateProviders = map[string]certProvider{
			CertProviderInstance: {PluginName: p.PluginName, Config: cfg},
		}
	}
	return json.Marshal(b)
}

// DefaultNodeID returns "gridmesh~<hostname>~<pid>~<random>".
func DefaultNodeID() string {
	host, _ := os.Hostname()
	var r [4]byte
	_, _ = rand.Read(r[:])
	return fmt.Sprintf("gridmesh~%s~%d~%s", host, os.Getpid(), hex.EncodeToString(r[:]))
}

// NewResolverBuilder returns an xds:/// resolver builder that uses the
// bootstrap for c. Pass it with grpc.WithResolvers. Each channel built with
// it gets its own xDS client. Safe for concurrent use.
func NewResolverBuilder(c Config) (resolver.Builder, error) {
	b, err := c.JSON()
	if err != nil {
		return nil, err
	}
	rb, err := xds.NewXDSResolverWithConfigForTesting(b)
	if err != nil {
		return nil, fmt.Errorf("xdsbootstrap: %w", err)
	}
	if c.Metrics != nil {
		return metricsBuilder{Builder: rb, metrics: c.Metrics}, nil
	}
	return rb, nil
}

// metricsBuilder builds xds resolvers whose xDS client reports its
// metrics to metrics as well as to the channel's stats handlers.
type metricsBuilder struct {
	resolver.Builder
	metrics estats.MetricsRecorder
}

func (b metricsBuilder) Build(target resolver.Target, cc resolver.ClientConn, opts resolver.BuildOptions) (resolver.Resolver, error) {
	if opts.MetricsRecorder != nil {
		opts.MetricsRecorder = teeRecorder{a: b.metrics, b: opts.MetricsRecorder}
	} else {
		opts.MetricsRecorder = b.metrics
	}
	return b.Builder.Build(target, cc, opts)
}

// teeRecorder records every measurement on both a and b.
type teeRecorder struct {
	estats.UnimplementedMetricsRecorder
	a, b estats.MetricsRecorder
}

func (t teeRecorder) RecordInt64Count(h *estats.Int64CountHandle, v int64, labels ...string) {
	t.a.RecordInt64Count(h, v, labels...)
	t.b.RecordInt64Count(h, v, labels...)
}

func (t teeRecorder) RecordFloat64Count(h *estats.Float64CountHandle, v float64, labels ...string) {
	t.a.RecordFloat64Count(h, v, labels...)
	t.b.RecordFloat64Count(h, v, labels...)
}

func (t teeRecorder) RecordInt64Histo(h *estats.Int64HistoHandle, v int64, labels ...string) {
	t.a.RecordInt64Histo(h, v, labels...)
	t.b.RecordInt64Histo(h, v, labels...)
}

func (t teeRecorder) RecordFloat64Histo(h *estats.Float64HistoHandle, v float64, labels ...string) {
	t.a.RecordFloat64Histo(h, v, labels...)
	t.b.RecordFloat64Histo(h, v, labels...)
}

func (t teeRecorder) RecordInt64Gauge(h *estats.Int64GaugeHandle, v int64, labels ...string) {
	t.a.RecordInt64Gauge(h, v, labels...)
	t.b.RecordInt64Gauge(h, v, labels...)
}

func (t teeRecorder) RecordInt64UpDownCount(h *estats.Int64UpDownCountHandle, v int64, labels ...string) {
	t.a.RecordInt64UpDownCount(h, v, labels...)
	t.b.RecordInt64UpDownCount(h, v, labels...)
}

func (t teeRecorder) RegisterAsyncReporter(r estats.AsyncMetricReporter, metrics ...estats.AsyncMetric) func() {
	ua, ub := t.a.RegisterAsyncReporter(r, metrics...), t.b.RegisterAsyncReporter(r, metrics...)
	return func() { ua(); ub() }
}

// ServerOption returns the option that makes an xds.GRPCServer use the
// bootstrap for c instead of the environment.
func ServerOption(c Config) (grpc.ServerOption, error) {
	b, err := c.JSON()
	if err != nil {
		return nil, err
	}
	return xds.BootstrapContentsForTesting(b), nil
}

// DialOptions returns what grpc.NewClient needs for an xds:/// target
// through the control plane in c: the resolver and grpc-go's xDS client
// credentials, which use the certificate provider in c when the control
// plane asks for mTLS and fallback when it sends no security config
// (fallback nil: plaintext).
func DialOptions(c Config, fallback credentials.TransportCredentials) ([]grpc.DialOption, error) {
	rb, err := NewResolverBuilder(c)
	if err != nil {
		return nil, err
	}
	if fallback == nil {
		fallback = insecure.NewCredentials()
	}
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: fallback})
	if err != nil {
		return nil, fmt.Errorf("xdsbootstrap: %w", err)
	}
	if c.WrapCredentials != nil {
		creds = c.WrapCredentials(creds)
	}
	return []grpc.DialOption{grpc.WithResolvers(rb), grpc.WithTransportCredentials(creds)}, nil
}

// ServerOptions returns what xds.NewGRPCServer needs to be configured by
// the control plane in c: the bootstrap and grpc-go's xDS server
// credentials (certificate provider from c for mTLS listeners, fallback
// otherwise; nil fallback: plaintext).
func ServerOptions(c Config, fallback credentials.TransportCredentials) ([]grpc.ServerOption, error) {
	bopt, err := ServerOption(c)
	if err != nil {
		return nil, err
	}
	if fallback == nil {
		fallback = insecure.NewCredentials()
	}
	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: fallback})
	if err != nil {
		return nil, fmt.Errorf("xdsbootstrap: %w", err)
	}
	if c.WrapCredentials != nil {
		creds = c.WrapCredentials(creds)
	}
	return []grpc.ServerOption{bopt, grpc.Creds(creds)}, nil
}
