package xdsresource_test

import (
	"strings"
	"testing"
	"time"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlspb "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherpb "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/gridmesh/gridmesh/internal/xdsresource"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func exact(s string) *matcherpb.StringMatcher {
	return &matcherpb.StringMatcher{MatchPattern: &matcherpb.StringMatcher_Exact{Exact: s}}
}

func clusterWith(t *testing.T, common *tlspb.CommonTlsContext) *clusterpb.Cluster {
	t.Helper()
	a, err := anypb.New(&tlspb.UpstreamTlsContext{CommonTlsContext: common})
	if err != nil {
		t.Fatal(err)
	}
	return &clusterpb.Cluster{Name: "trading", TransportSocket: &corepb.TransportSocket{
		Name: "envoy.transport_sockets.tls", ConfigType: &corepb.TransportSocket_TypedConfig{TypedConfig: a}}}
}

func validation(ms ...*matcherpb.StringMatcher) *tlspb.CommonTlsContext {
	return &tlspb.CommonTlsContext{ValidationContextType: &tlspb.CommonTlsContext_ValidationContext{
		ValidationContext: &tlspb.CertificateValidationContext{MatchSubjectAltNames: ms}}}
}

func combined(ms ...*matcherpb.StringMatcher) *tlspb.CommonTlsContext {
	return &tlspb.CommonTlsContext{ValidationContextType: &tlspb.CommonTlsContext_CombinedValidationContext{
		CombinedValidationContext: &tlspb.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext: &tlspb.CertificateValidationContext{MatchSubjectAltNames: ms}}}}
}

// TestClusterSANsAsGRPCReadsThem: both places grpc-go reads SAN matchers,
// every matcher kind, and the matchers it refuses.
func TestClusterSANsAsGRPCReadsThem(t *testing.T) {
	const trading, other = "spiffe://example.org/trading", "spiffe://example.org/other"
	tests := []struct {
		name    string
		cluster *clusterpb.Cluster
		want    []string        // SAN.String of each matcher
		match   map[string]bool // ID -> MatchAny
		wantErr bool
	}{
		{name: "no TLS", cluster: &clusterpb.Cluster{Name: "trading"}},
		{name: "validation context", cluster: clusterWith(t, validation(exact(trading))),
			want: []string{trading}, match: map[string]bool{trading: true, other: false}},
		{name: "combined validation context", cluster: clusterWith(t, combined(exact(trading))),
			want: []string{trading}, match: map[string]bool{trading: true, other: false}},
		{name: "prefix, ignoring case", cluster: clusterWith(t, validation(&matcherpb.StringMatcher{
			MatchPattern: &matcherpb.StringMatcher_Prefix{Prefix: "SPIFFE://example.org/trad"}, IgnoreCase: true})),
			want: []string{"prefix SPIFFE://example.org/trad (ignore case)"}, match: map[string]bool{trading: true, other: false}},
		{name: "suffix and contains", cluster: clusterWith(t, validation(
			&matcherpb.StringMatcher{MatchPattern: &matcherpb.StringMatcher_Suffix{Suffix: "/other"}},
			&matcherpb.StringMatcher{MatchPattern: &matcherpb.StringMatcher_Contains{Contains: "trad"}})),
			want: []string{"suffix /other", "contains trad"}, match: map[string]bool{trading: true, other: true, "spiffe://example.org/x": false}},
		{name: "regex matches the whole ID", cluster: clusterWith(t, validation(&matcherpb.StringMatcher{
			MatchPattern: &matcherpb.StringMatcher_SafeRegex{SafeRegex: &matcherpb.RegexMatcher{Regex: "spiffe://example.org/t.*"}}})),
			want: []string{"regex spiffe://example.org/t.*"}, match: map[string]bool{trading: true, other: false, "x" + trading: false}},
		{name: "empty prefix refused", cluster: clusterWith(t, validation(&matcherpb.StringMatcher{MatchPattern: &matcherpb.StringMatcher_Prefix{}})), wantErr: true},
		{name: "bad regex refused", cluster: clusterWith(t, validation(&matcherpb.StringMatcher{
			MatchPattern: &matcherpb.StringMatcher_SafeRegex{SafeRegex: &matcherpb.RegexMatcher{Regex: "("}}})), wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sans, err := xdsresource.ClusterSANs(tc.cluster)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			var got []string
			for _, s := range sans {
				got = append(got, s.String())
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("SANs (-want +got):\n%s", diff)
			}
			for id, want := range tc.match {
				if got := xdsresource.MatchAny(sans, id); got != want {
					t.Errorf("MatchAny(%q) = %v, want %v", id, got, want)
				}
			}
		})
	}
}

// TestCatchAll: only a match with no condition beyond a "" or "/" prefix
// takes every request.
func TestCatchAll(t *testing.T) {
	prefix := func(p string) *routepb.RouteMatch {
		return &routepb.RouteMatch{PathSpecifier: &routepb.RouteMatch_Prefix{Prefix: p}}
	}
	withHeader := prefix("/")
	withHeader.Headers = []*routepb.HeaderMatcher{{Name: "x-version"}}
	withQuery := prefix("/")
	withQuery.QueryParameters = []*routepb.QueryParameterMatcher{{Name: "v"}}
	withFraction := prefix("")
	withFraction.RuntimeFraction = &corepb.RuntimeFractionalPercent{}
	caseInsensitive := prefix("/")
	caseInsensitive.CaseSensitive = wrapperspb.Bool(false)
	tests := map[string]struct {
		m    *routepb.RouteMatch
		want bool
	}{
		"empty prefix":     {prefix(""), true},
		"slash":            {prefix("/"), true},
		"slash, any case":  {caseInsensitive, true},
		"longer prefix":    {prefix("/v1"), false},
		"path":             {&routepb.RouteMatch{PathSpecifier: &routepb.RouteMatch_Path{Path: "/"}}, false},
		"header condition": {withHeader, false},
		"query condition":  {withQuery, false},
		"runtime fraction": {withFraction, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := xdsresource.CatchAll(tc.m); got != tc.want {
				t.Errorf("CatchAll = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestParseRetryAsGRPCReadsIt: a route's retry policy is read with
// grpc-go's defaults and refusals.
func TestParseRetryAsGRPCReadsIt(t *testing.T) {
	ms := func(d time.Duration) *durationpb.Duration { return durationpb.New(d) }
	tests := []struct {
		name    string
		policy  *routepb.RetryPolicy
		want    xdsresource.Retry
		wantErr string
	}{
		{"defaults", &routepb.RetryPolicy{RetryOn: "unavailable"}, xdsresource.Retry{Attempts: 2, Base: 25 * time.Millisecond, Max: 250 * time.Millisecond, On: "unavailable"}, ""},
		{"num_retries", &routepb.RetryPolicy{RetryOn: "unavailable", NumRetries: wrapperspb.UInt32(4)}, xdsresource.Retry{Attempts: 5, Base: 25 * time.Millisecond, Max: 250 * time.Millisecond, On: "unavailable"}, ""},
		{"backoff", &routepb.RetryPolicy{RetryOn: "cancelled", RetryBackOff: &routepb.RetryPolicy_RetryBackOff{BaseInterval: ms(time.Millisecond), MaxInterval: ms(time.Second)}},
			xdsresource.Retry{Attempts: 2, Base: time.Millisecond, Max: time.Second, On: "cancelled"}, ""},
		{"names cleaned, unknown dropped", &routepb.RetryPolicy{RetryOn: " Unavailable ,5xx,internal"}, xdsresource.Retry{Attempts: 2, Base: 25 * time.Millisecond, Max: 250 * time.Millisecond, On: "unavailable,internal"}, ""},
		{"no known code: no retries", &routepb.RetryPolicy{RetryOn: "5xx,reset"}, xdsresource.Retry{Attempts: 1, Base: 25 * time.Millisecond, Max: 250 * time.Millisecond}, ""},
		{"num_retries 0", &routepb.RetryPolicy{RetryOn: "unavailable", NumRetries: wrapperspb.UInt32(0)}, xdsresource.Retry{}, "num_retries = 0; must be >= 1"},
		{"base 0", &routepb.RetryPolicy{RetryOn: "unavailable", RetryBackOff: &routepb.RetryPolicy_RetryBackOff{BaseInterval: ms(0)}}, xdsresource.Retry{}, "base_interval = 0s; must be > 0"},
		{"max 0", &routepb.RetryPolicy{RetryOn: "unavailable", RetryBackOff: &routepb.RetryPolicy_RetryBackOff{BaseInterval: ms(time.Millisecond), MaxInterval: ms(0)}}, xdsresource.Retry{}, "max_interval = 0s; must be > 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := xdsresource.ParseRetry(tc.policy)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseRetry = %v, %v; want an error with %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseRetry (-want +got):\n%s", diff)
			}
		})
	}
}
