package xdsbootstrap

import (
	"encoding/json"
	"fmt"
	"strconv"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/xds/bootstrap"

	"github.com/gridmesh/gridmesh/internal/xdsstatus"
)

// ChannelCredsType is the bootstrap channel_creds type of credentials
// registered with RegisterChannelCreds.
const ChannelCredsType = "gridmesh_mtls"

func init() { bootstrap.RegisterChannelCredentials(mtlsCreds{}) }

var (
	credsMu   sync.Mutex
	credsByID = map[string]credentials.TransportCredentials{}
	credsNext int
)

// ChannelCreds names transport credentials registered for the connection
// to the control plane (see RegisterChannelCreds).
type ChannelCreds struct{ key string }

// RegisterChannelCreds makes creds the credentials of the control-plane
// connection of every bootstrap whose Config.ChannelCreds is the result:
// the mesh passes mTLS credentials that present the workload's SVID (read
// on every handshake, so rotation applies to the next connection) and
// accept only the control plane's SPIFFE ID. Call release when no channel
// or server built with such a bootstrap is left; connections after that
// fail. Safe for concurrent use.
func RegisterChannelCreds(creds credentials.TransportCredentials) (cc *ChannelCreds, release func()) {
	credsMu.Lock()
	credsNext++
	key := "creds-" + strconv.Itoa(credsNext)
	credsByID[key] = creds
	credsMu.Unlock()
	var once sync.Once
	return &ChannelCreds{key: key}, func() {
		once.Do(func() {
			credsMu.Lock()
			delete(credsByID, key)
			credsMu.Unlock()
		})
	}
}

type mtlsCredsConfig struct {
	Creds    string `json:"creds"`
	Recorder string `json:"recorder,omitempty"`
}

// mtlsCreds is the bootstrap.ChannelCredentials for ChannelCredsType.
type mtlsCreds struct{}

func (mtlsCreds) Name() string { return ChannelCredsType }

func (mtlsCreds) Build(config json.RawMessage) (credentials.Bundle, func(), error) {
	var c mtlsCredsConfig
	if err := json.Unmarshal(config, &c); err != nil {
		return nil, nil, fmt.Errorf("xdsbootstrap: channel_creds config %s: %w (want {\"creds\": \"<key>\"})", config, err)
	}
	credsMu.Lock()
	creds, ok := credsByID[c.Creds]
	credsMu.Unlock()
	if !ok {
		return nil, nil, fmt.Errorf("xdsbootstrap: control-plane credentials %q are not registered in this process (RegisterChannelCreds), or were released", c.Creds)
	}
	return mtlsBundle{creds: creds, rec: xdsstatus.Lookup(c.Recorder)}, func() {}, nil
}

type mtlsBundle struct {
	creds credentials.TransportCredentials
	rec   *xdsstatus.Recorder
}

func (b mtlsBundle) TransportCredentials() credentials.TransportCredentials { return b.creds }

func (mtlsBundle) PerRPCCredentials() credentials.PerRPCCredentials { return nil }

func (b mtlsBundle) NewWithMode(string) (credentials.Bundle, error) { return b, nil }

// DialOptions is read by grpc-go's bootstrap (internal/xds/bootstrap,
// "extraDialOptions"): the Recorder's interceptor, when there is one.
func (b mtlsBundle) DialOptions() []grpc.DialOption {
	if b.rec == nil {
		return nil
	}
	return []grpc.DialOption{grpc.WithChainStreamInterceptor(b.rec.StreamInterceptor())}
}
