package xdsbootstrap_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/gridmesh/gridmesh/internal/xdsbootstrap"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestJSON(t *testing.T) {
	tests := []struct {
		name string
		cfg  xdsbootstrap.Config
		want string
	}{
		{
			name: "plaintext",
			cfg:  xdsbootstrap.Config{ServerURI: "127.0.0.1:15010", NodeID: "n1", Cluster: "trading", InsecurePlaintext: true},
			want: `{"xds_servers":[{"server_uri":"127.0.0.1:15010","channel_creds":[{"type":"insecure"}],"server_features":["xds_v3","ignore_resource_deletion"]}],
				"node":{"id":"n1","cluster":"trading"},
				"server_listener_resource_name_template":"grpc/server?xds.resource.listening_address=%s",
				"client_default_listener_resource_name_template":"%s"}`,
		},
		{
			name: "with certificate provider",
			cfg: xdsbootstrap.Config{ServerURI: "meshd:15010", NodeID: "n1", InsecurePlaintext: true,
				CertProvider: &xdsbootstrap.CertProvider{PluginName: "gridmesh-spiffe", Config: json.RawMessage(`{"source":"s1"}`)}},
			want: `{"xds_servers":[{"server_uri":"meshd:15010","channel_creds":[{"type":"insecure"}],"server_features":["xds_v3","ignore_resource_deletion"]}],
				"node":{"id":"n1"},
				"certificate_providers":{"gridmesh":{"plugin_name":"gridmesh-spiffe","config":{"source":"s1"}}},
				"server_listener_resource_name_template":"grpc/server?xds.resource.listening_address=%s",
				"client_default_listener_resource_name_template":"%s"}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.cfg.JSON()
			if err != nil {
				t.Fatal(err)
			}
			var g, w any
			if err := json.Unmarshal(got, &g); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal([]byte(tt.want), &w); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(w, g); diff != "" {
				t.Errorf("bootstrap (-want +got):\n%s", diff)
			}
			// grpc-go must accept it.
			if _, err := xdsbootstrap.NewResolverBuilder(tt.cfg); err != nil {
				t.Errorf("NewResolverBuilder: %v", err)
			}
		})
	}
}

// TestJSONMTLS: with ChannelCreds the control-plane connection uses the
// registered credentials, and a server's listener name template carries
// its SPIFFE ID.
func TestJSONMTLS(t *testing.T) {
	cc, release := xdsbootstrap.RegisterChannelCreds(insecure.NewCredentials())
	defer release()
	cfg := xdsbootstrap.Config{ServerURI: "127.0.0.1:15010", NodeID: "n1", ChannelCreds: cc, ServerIdentity: "spiffe://rec.example/trading"}
	b, err := cfg.JSON()
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		XDSServers []struct {
			ChannelCreds []struct {
				Type   string         `json:"type"`
				Config map[string]any `json:"config"`
			} `json:"channel_creds"`
		} `json:"xds_servers"`
		Template string `json:"server_listener_resource_name_template"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.XDSServers) != 1 || len(got.XDSServers[0].ChannelCreds) != 1 {
		t.Fatalf("bootstrap %s: want one server with one channel_creds", b)
	}
	creds := got.XDSServers[0].ChannelCreds[0]
	if creds.Type != xdsbootstrap.ChannelCredsType || creds.Config["creds"] == "" {
		t.Errorf("channel_creds %+v, want type %s naming the registered credentials", creds, xdsbootstrap.ChannelCredsType)
	}
	if want := "grpc/server/rec.example/trading?xds.resource.listening_address=%s"; got.Template != want {
		t.Errorf("server listener template %q, want %q", got.Template, want)
	}
	if _, err := xdsbootstrap.NewResolverBuilder(cfg); err != nil {
		t.Errorf("NewResolverBuilder: %v", err)
	}
}

// TestJSONRefusesPlaintextByDefault: without credentials for the control
// plane, or with both kinds, there is no bootstrap.
func TestJSONRefusesPlaintextByDefault(t *testing.T) {
	cc, release := xdsbootstrap.RegisterChannelCreds(insecure.NewCredentials())
	defer release()
	for name, cfg := range map[string]xdsbootstrap.Config{
		"neither": {ServerURI: "127.0.0.1:15010"},
		"both":    {ServerURI: "127.0.0.1:15010", ChannelCreds: cc, InsecurePlaintext: true},
	} {
		_, err := cfg.JSON()
		if err == nil || !strings.Contains(err.Error(), "InsecurePlaintext") {
			t.Errorf("%s: %v, want an error naming ChannelCreds and InsecurePlaintext", name, err)
		}
	}
}

func TestJSONRefusesBadAddress(t *testing.T) {
	for _, addr := range []string{"", "15010", "meshd:http", "meshd:0"} {
		_, err := xdsbootstrap.Config{ServerURI: addr}.JSON()
		if err == nil || !strings.HasPrefix(err.Error(), "xdsbootstrap: ") {
			t.Errorf("ServerURI %q: %v, want an xdsbootstrap error", addr, err)
		}
	}
}

func TestDefaultNodeIDIsUnique(t *testing.T) {
	a, b := xdsbootstrap.DefaultNodeID(), xdsbootstrap.DefaultNodeID()
	if a == b || !strings.HasPrefix(a, "gridmesh~") {
		t.Errorf("node IDs %q and %q", a, b)
	}
}
