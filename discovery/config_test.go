package discovery_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/gridmesh/gridmesh/discovery"
)

func TestParseTarget(t *testing.T) {
	tests := []struct {
		in      string
		want    discovery.Target
		wantErr string
	}{
		{in: "consul:///trading", want: discovery.Target{Scheme: "consul", Service: "trading"}},
		{in: "consul:///trading?tag=v2&tag=eu&dc=dc2", want: discovery.Target{Scheme: "consul", Service: "trading", Tags: []string{"v2", "eu"}, Datacenter: "dc2"}},
		{in: "static:///10.0.0.1:8443,10.0.0.2:8443", want: discovery.Target{Scheme: "static", Addrs: []string{"10.0.0.1:8443", "10.0.0.2:8443"}}},
		{in: "static:///[::1]:80?spiffe_id=spiffe://example.org/service/x", want: discovery.Target{Scheme: "static", Addrs: []string{"[::1]:80"}, ID: spiffeid.RequireFromString("spiffe://example.org/service/x")}},
		{in: "consul://agent:8500/trading", wantErr: "authority"},
		{in: "consul:///", wantErr: "want consul:///<service name>"},
		{in: "consul:///a/b", wantErr: "want consul:///<service name>"},
		{in: "consul:///trading?region=eu", wantErr: `unknown parameter "region"`},
		{in: "static:///10.0.0.1", wantErr: "want host:port"},
		{in: "static:///10.0.0.1:0", wantErr: "port in 1-65535"},
		{in: "static:///a:1?spiffe_id=nope", wantErr: "spiffe_id"},
		{in: "dns:///trading", wantErr: "not discovery's"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := discovery.ParseTarget(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseTarget(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b spiffeid.ID) bool { return a == b })); diff != "" {
				t.Errorf("ParseTarget(%q) (-want +got):\n%s", tt.in, diff)
			}
			again, err := discovery.ParseTarget(got.String())
			if err != nil || !cmp.Equal(got, again, cmp.Comparer(func(a, b spiffeid.ID) bool { return a == b })) {
				t.Errorf("String() = %q does not parse back: %v", got.String(), err)
			}
		})
	}
}

func TestBalancerServiceConfig(t *testing.T) {
	tests := []struct {
		name string
		b    discovery.Balancer
		want string
	}{
		{"zero is round robin", discovery.Balancer{}, `{"loadBalancingConfig":[{"round_robin":{}}]}`},
		{"least request", discovery.Balancer{Policy: discovery.LeastRequest, ChoiceCount: 3}, `{"loadBalancingConfig":[{"least_request_experimental":{"choiceCount":3}}]}`},
		{"ring hash", discovery.Balancer{Policy: discovery.RingHash, HashHeader: "x-market-id"}, `{"loadBalancingConfig":[{"gridmesh_ring_hash":{"hashHeader":"x-market-id"}}]}`},
		{"weighted", discovery.Balancer{Policy: discovery.WeightedRoundRobin, Weighted: &discovery.WeightedConfig{BlackoutPeriod: 100 * time.Millisecond}},
			`{"loadBalancingConfig":[{"weighted_round_robin":{"blackoutPeriod":"0.1s"}}]}`},
		{"outlier detection", discovery.Balancer{Policy: discovery.LeastRequest, Outlier: &discovery.OutlierDetection{
			Interval: time.Second, BaseEjectionTime: 5 * time.Second, MaxEjectionPercent: 50,
			FailurePercentage: &discovery.FailurePercentageEjection{Threshold: 50, EnforcementPercentage: 100, MinimumHosts: 2, RequestVolume: 10},
		}}, `{"loadBalancingConfig":[{"outlier_detection_experimental":{"baseEjectionTime":"5s","childPolicy":[{"least_request_experimental":{}}],"failurePercentageEjection":{"enforcementPercentage":100,"minimumHosts":2,"requestVolume":10,"threshold":50},"interval":"1s","maxEjectionPercent":50}}]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.b.ServiceConfig()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ServiceConfig (-want +got):\n%s", diff)
			}
			// grpc-go must accept it.
			conn, err := grpc.NewClient("passthrough:///x", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultServiceConfig(got))
			if err != nil {
				t.Fatalf("grpc rejects %s: %v", got, err)
			}
			_ = conn.Close()
		})
	}
}

func TestBalancerValidate(t *testing.T) {
	tests := []struct {
		name string
		b    discovery.Balancer
		want []string // substrings of the error
	}{
		{"unknown policy", discovery.Balancer{Policy: "random"}, []string{`Balancer.Policy "random": want one of`}},
		{"ring hash without header", discovery.Balancer{Policy: discovery.RingHash}, []string{"Balancer.HashHeader: ring_hash needs"}},
		{"upper-case header", discovery.Balancer{Policy: discovery.RingHash, HashHeader: "X-Market"}, []string{`HashHeader "X-Market": want a lower-case`}},
		{"binary header", discovery.Balancer{Policy: discovery.RingHash, HashHeader: "key-bin"}, []string{`"-bin"`}},
		{"header without ring hash", discovery.Balancer{HashHeader: "x-market-id"}, []string{"are for ring_hash"}},
		{"choice count", discovery.Balancer{Policy: discovery.LeastRequest, ChoiceCount: 1}, []string{"ChoiceCount 1: want 2-10"}},
		{"outlier percentages and no method", discovery.Balancer{Outlier: &discovery.OutlierDetection{MaxEjectionPercent: 150, Interval: -time.Second}},
			[]string{"MaxEjectionPercent 150", "Outlier.Interval -1s", "set SuccessRate or FailurePercentage"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.b.Validate()
			if err == nil {
				t.Fatal("Validate() = nil, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, want it to contain %q", err, w)
				}
			}
			if _, err := tt.b.ServiceConfig(); err == nil {
				t.Error("ServiceConfig() accepted an invalid Balancer")
			}
		})
	}
}

func TestServiceIDAndName(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	id, err := discovery.ServiceID(td, "trading")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := id.String(), "spiffe://example.org/service/trading"; got != want {
		t.Errorf("ServiceID = %s, want %s", got, want)
	}
	if _, err := discovery.ServiceID(td, "a/b"); err == nil {
		t.Error("ServiceID accepted a name with a slash")
	}
	for _, tt := range []struct {
		id   string
		name string
		ok   bool
	}{
		{"spiffe://example.org/service/trading", "trading", true},
		{"spiffe://example.org/ns/default/dc/dc1/svc/web", "web", true},
		{"spiffe://example.org/service/a/b", "", false},
		{"spiffe://example.org/workload/x", "", false},
	} {
		name, ok := discovery.ServiceName(spiffeid.RequireFromString(tt.id))
		if name != tt.name || ok != tt.ok {
			t.Errorf("ServiceName(%s) = %q, %v; want %q, %v", tt.id, name, ok, tt.name, tt.ok)
		}
	}
}
