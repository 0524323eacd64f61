package xdsstatus

import (
	"encoding/json"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/xds/bootstrap"
)

// CredentialsType is the bootstrap channel_creds type that connects to the
// control plane in plaintext, like "insecure", and records the ADS stream
// with the Recorder its config names.
const CredentialsType = "gridmesh_recorded_insecure"

func init() { bootstrap.RegisterChannelCredentials(recordedCreds{}) }

// ChannelCreds returns the channel_creds entry (type and config) of a
// bootstrap whose xDS client this Recorder records.
func (r *Recorder) ChannelCreds() (typ string, config json.RawMessage) {
	b, _ := json.Marshal(credsConfig{Recorder: r.id})
	return CredentialsType, b
}

type credsConfig struct {
	Recorder string `json:"recorder"`
}

// recordedCreds is the bootstrap.ChannelCredentials for CredentialsType.
type recordedCreds struct{}

func (recordedCreds) Name() string { return CredentialsType }

// Build returns plaintext credentials whose dial options add the
// Recorder's interceptor. grpc-go appends the dial options of a bundle that
// has them (a DialOptions method) to its connection to the control plane.
// A Recorder already closed records nothing.
func (recordedCreds) Build(config json.RawMessage) (credentials.Bundle, func(), error) {
	var c credsConfig
	if err := json.Unmarshal(config, &c); err != nil {
		return nil, nil, fmt.Errorf("xdsstatus: channel_creds config %s: %w (want {\"recorder\": \"<id>\"})", config, err)
	}
	return recordedBundle{r: lookup(c.Recorder)}, func() {}, nil
}

type recordedBundle struct{ r *Recorder }

func (recordedBundle) TransportCredentials() credentials.TransportCredentials {
	return insecure.NewCredentials()
}

func (recordedBundle) PerRPCCredentials() credentials.PerRPCCredentials { return nil }

func (b recordedBundle) NewWithMode(string) (credentials.Bundle, error) { return b, nil }

// DialOptions is read by grpc-go's bootstrap (internal/xds/bootstrap,
// "extraDialOptions").
func (b recordedBundle) DialOptions() []grpc.DialOption {
	if b.r == nil {
		return nil
	}
	return []grpc.DialOption{grpc.WithChainStreamInterceptor(b.r.StreamInterceptor())}
}
