package bench_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/gridmesh/gridmesh/bench/internal/echo"
	"github.com/gridmesh/gridmesh/internal/meshtls"
	"github.com/gridmesh/gridmesh/internal/testutil/pki"
	"github.com/gridmesh/gridmesh/security"
)

// BenchmarkAuthorize measures the mesh's server interceptor
// (meshtls.Interceptors) per call, on a context shaped like grpc-go's: a
// peer with the caller's X.509-SVID in its TLS state, from which the
// interceptor reads the SPIFFE ID. The rule sets are a realistic policy of
// 20 rules with the matching one last, so a change that makes matching or
// the denial path allocate shows here.
func BenchmarkAuthorize(b *testing.B) {
	caller := spiffeid.RequireFromPath(td, "/service/trading")
	ca := pki.NewCA(b, td.Name())
	ctx := pki.PeerContext(context.Background(), ca.Issue(b, pki.Leaf{URIs: []string{caller.String()}}))
	var rules []security.Rule
	for i := range 19 {
		rules = append(rules, security.Allow(fmt.Sprintf("other-%d", i),
			spiffeid.MatchID(spiffeid.RequireFromPath(td, fmt.Sprintf("/service/other-%d", i))),
			fmt.Sprintf("/svc%d.Service/*", i)))
	}
	rules = append(rules, security.Allow("trading", spiffeid.MatchID(caller), echo.Method))

	allowRules, err := security.Rules(rules...)
	if err != nil {
		b.Fatal(err)
	}
	memberOf, err := security.Rules(security.Allow("td", spiffeid.MatchMemberOf(td)))
	if err != nil {
		b.Fatal(err)
	}
	// Twenty callers of one method in one rule, the caller last: a
	// matcher is asked once per rule whose patterns match.
	var callers []spiffeid.ID
	for i := range 19 {
		callers = append(callers, spiffeid.RequireFromPath(td, fmt.Sprintf("/service/other-%d", i)))
	}
	oneOf, err := security.Rules(security.Allow("callers", spiffeid.MatchOneOf(append(callers, caller)...), echo.Method))
	if err != nil {
		b.Fatal(err)
	}
	cases := []struct {
		name   string
		authz  security.Authorizer
		method string
		denied bool
	}{
		{"allow-all", meshtls.AllowAll, echo.Method, false},
		{"rules-allow", allowRules, echo.Method, false},
		{"rules-deny", allowRules, "/grpc.testing.TestService/EmptyCall", true},
		{"member-of", memberOf, echo.Method, false},
		{"one-of-20", oneOf, echo.Method, false},
	}
	handler := func(context.Context, any) (any, error) { return nil, nil }
	for _, c := range cases {
		unary, stream := meshtls.Interceptors(c.authz, nil)
		b.Run("unary/"+c.name, func(b *testing.B) {
			info := &grpc.UnaryServerInfo{FullMethod: c.method}
			b.ReportAllocs()
			for b.Loop() {
				_, err := unary(ctx, nil, info, handler)
				if (err != nil) != c.denied {
					b.Fatalf("err = %v, want denied %v", err, c.denied)
				}
			}
		})
		b.Run("stream/"+c.name, func(b *testing.B) {
			info := &grpc.StreamServerInfo{FullMethod: c.method}
			ss := &serverStream{ctx: ctx}
			b.ReportAllocs()
			for b.Loop() {
				err := stream(nil, ss, info, func(any, grpc.ServerStream) error { return nil })
				if (err != nil) != c.denied {
					b.Fatalf("err = %v, want denied %v", err, c.denied)
				}
			}
		})
	}
}

type serverStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *serverStream) Context() context.Context { return s.ctx }
