package controlplane_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gridmesh/gridmesh/controlplane"
)

const fullConfig = `mtls: true
services:
  - name: trading
    port: 8443
    spiffe_id: spiffe://rec.test/trading
    lb: ring_hash
    hash_header: x-account
    endpoints: [10.0.0.1, "10.0.0.2:9000"]
    versions:
      - name: v1
        endpoints: [10.0.1.1]
      - name: v2
    timeout: 2s
    retry: {on: [unavailable, resource-exhausted], attempts: 3, base_interval: 10ms}
    circuit_breaker: {max_requests: 100}
    outlier_detection: {interval: 5s, failure_percent_threshold: 60}
    routes:
      - name: canary
        match:
          prefix: /rec.Trading/
          headers: [{name: x-canary, exact: "true"}]
        split: [{version: v1, weight: 90}, {version: v2, weight: 10}]
        fault: {abort: {code: UNAVAILABLE, percent: 0.5}}
    authorization:
      - name: frontend
        sources: [spiffe://rec.test/frontend, "spiffe://rec.test/ns/prod/*"]
        methods: [/rec.Trading/Buy, "/rec.Trading/*"]
`

func TestParseConfigAcceptsFullConfig(t *testing.T) {
	cfg, err := controlplane.ParseConfig("meshd.yaml", []byte(fullConfig))
	if err != nil {
		t.Fatal(err)
	}
	want := &controlplane.Config{MTLS: true, Services: []controlplane.Service{{
		Name: "trading", Port: 8443, SPIFFEID: "spiffe://rec.test/trading", LB: "ring_hash", HashHeader: "x-account",
		Endpoints:        []string{"10.0.0.1", "10.0.0.2:9000"},
		Versions:         []controlplane.Version{{Name: "v1", Endpoints: []string{"10.0.1.1"}}, {Name: "v2"}},
		Timeout:          2 * time.Second,
		Retry:            &controlplane.RetryPolicy{On: []string{"unavailable", "resource-exhausted"}, Attempts: 3, BaseInterval: 10 * time.Millisecond},
		CircuitBreaker:   &controlplane.CircuitBreaker{MaxRequests: 100},
		OutlierDetection: &controlplane.OutlierDetection{Interval: 5 * time.Second, FailurePercentThreshold: 60},
		Routes: []controlplane.Route{{
			Name:  "canary",
			Match: controlplane.Match{Prefix: "/rec.Trading/", Headers: []controlplane.HeaderMatch{{Name: "x-canary", Exact: "true"}}},
			Split: []controlplane.WeightedVersion{{Version: "v1", Weight: 90}, {Version: "v2", Weight: 10}},
			Fault: &controlplane.Fault{Abort: &controlplane.AbortFault{Code: "UNAVAILABLE", Percent: 0.5}},
		}},
		Authorization: []controlplane.Policy{{
			Name:    "frontend",
			Sources: []string{"spiffe://rec.test/frontend", "spiffe://rec.test/ns/prod/*"},
			Methods: []string{"/rec.Trading/Buy", "/rec.Trading/*"},
		}},
	}}}
	if diff := cmp.Diff(want, cfg); diff != "" {
		t.Errorf("parsed config (-want +got):\n%s", diff)
	}
}

func TestParseConfigRefusesWithFieldLineAndFix(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []controlplane.Problem
	}{
		{
			name: "misspelt key",
			yaml: "services:\n  - name: a\n    rutes: []\n",
			want: []controlplane.Problem{{Line: 3, Field: "services[0].rutes", Message: `unknown key "rutes" (did you mean "routes"?); the keys here are name, port, spiffe_id, lb, hash_header, endpoints, versions, routes, timeout, retry, circuit_breaker, outlier_detection, authorization`}},
		},
		{
			name: "not YAML",
			yaml: "services: [\n",
			want: []controlplane.Problem{{Line: 1, Message: "not valid YAML: did not find expected node content"}},
		},
		{
			name: "split to undeclared version",
			yaml: "services:\n  - name: a\n    versions: [{name: v1}]\n    routes:\n      - split:\n          - {version: v1, weight: 90}\n          - {version: v3, weight: 10}\n",
			want: []controlplane.Problem{{Line: 7, Field: "services[0].routes[0].split[1].version", Message: `"v3" is not a version of this service; declare it under versions`}},
		},
		{
			name: "bare number duration",
			yaml: "services:\n  - name: a\n    timeout: 2\n",
			want: []controlplane.Problem{{Line: 3, Field: "services[0].timeout", Message: "2 has no unit; timeout takes a duration with a unit, like 250ms or 2s"}},
		},
		{
			name: "duplicate service and bad lb",
			yaml: "services:\n  - name: a\n  - name: a\n    lb: random\n",
			want: []controlplane.Problem{
				{Line: 3, Field: "services[1].name", Message: `"a" is already the name of services[0]; service names must be unique`},
				{Line: 4, Field: "services[1].lb", Message: `"random" is not a load-balancing policy; use round_robin, least_request or ring_hash`},
			},
		},
		{
			name: "authorization without mtls",
			yaml: "services:\n  - name: a\n    authorization:\n      - sources: [spiffe://td/x]\n",
			want: []controlplane.Problem{{Line: 3, Field: "services[0].authorization", Message: "needs mtls: true at the top of the file: without mTLS no caller has a SPIFFE ID and every call would be denied"}},
		},
		{
			name: "bad source and method",
			yaml: "mtls: true\nservices:\n  - name: a\n    authorization:\n      - sources: [frontend]\n        methods: [Buy]\n",
			want: []controlplane.Problem{
				{Line: 5, Field: "services[0].authorization[0].sources[0]", Message: `"frontend" is not a SPIFFE ID (scheme is missing or invalid); write spiffe://td/path, spiffe://td/path/* or spiffe://td/*`},
				{Line: 6, Field: "services[0].authorization[0].methods[0]", Message: `"Buy" is not a method; use "/pkg.Service/Method", "/pkg.Service/*" or "*"`},
			},
		},
		{
			name: "endpoint in two services",
			yaml: "services:\n  - name: a\n    endpoints: [\"10.0.0.1:80\"]\n  - name: b\n    endpoints: [\"10.0.0.1:80\"]\n",
			want: []controlplane.Problem{{Line: 5, Field: "services[1].endpoints[0]", Message: `10.0.0.1:80 is already an endpoint of service "a"; an address serves one service`}},
		},
		{
			name: "fault percent and code",
			yaml: "services:\n  - name: a\n    routes:\n      - fault: {abort: {code: NOPE, percent: 150}}\n",
			want: []controlplane.Problem{
				{Line: 4, Field: "services[0].routes[0].fault.abort.code", Message: `"NOPE" is not a gRPC error code; use a name like UNAVAILABLE or PERMISSION_DENIED`},
				{Line: 4, Field: "services[0].routes[0].fault.abort.percent", Message: "150 is not a percentage in (0, 100]"},
			},
		},
		{
			name: "header with two matchers and a bad retry code",
			yaml: "services:\n  - name: a\n    retry: {on: [aborted]}\n    routes:\n      - match:\n          headers: [{name: x-a, exact: b, prefix: c}]\n",
			want: []controlplane.Problem{
				{Line: 3, Field: "services[0].retry.on[0]", Message: `"aborted" is not retriable by grpc-go; use unavailable, cancelled, deadline-exceeded, internal or resource-exhausted`},
				{Line: 6, Field: "services[0].routes[0].match.headers[0]", Message: "set exactly one of exact, prefix, regex, present (found 2)"},
			},
		},
		{
			name: "unreachable route",
			yaml: "services:\n  - name: a\n    routes:\n      - name: all\n      - name: never\n        match: {prefix: /x/}\n",
			want: []controlplane.Problem{{Line: 5, Field: "services[0].routes[1]", Message: "is never reached: an earlier route matches every call; move it before that route"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := controlplane.ParseConfig("meshd.yaml", []byte(tt.yaml))
			var ce *controlplane.ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("ParseConfig: %v, want a *ConfigError", err)
			}
			if ce.File != "meshd.yaml" || !strings.HasPrefix(err.Error(), "controlplane: meshd.yaml refused: ") {
				t.Errorf("error %q does not name the file", err)
			}
			if diff := cmp.Diff(tt.want, ce.Problems); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSetConfigKeepsLastGood(t *testing.T) {
	s := controlplane.NewServer()
	defer s.Close()
	good := &controlplane.Config{Services: []controlplane.Service{{Name: "a", Endpoints: []string{"127.0.0.1:1"}}}}
	if err := s.SetConfig("good", good); err != nil {
		t.Fatal(err)
	}
	v := s.Version()
	bad := &controlplane.Config{Services: []controlplane.Service{{Name: "A"}}}
	if err := s.SetConfig("bad", bad); err == nil {
		t.Fatal("bad config accepted")
	}
	if got := s.Version(); got != v {
		t.Errorf("version %s after a refused config, want %s", got, v)
	}
	if got := s.Stats().Rejections; got != 1 {
		t.Errorf("rejections = %d, want 1", got)
	}
}
