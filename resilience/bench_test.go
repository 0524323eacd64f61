package resilience_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/gridmesh/gridmesh/internal/testutil/overhead"
	"github.com/gridmesh/gridmesh/resilience"
	"github.com/gridmesh/gridmesh/resilience/internal/ledgertest"
)

// BenchmarkUnaryClientInterceptor measures the interceptor's own cost per
// RPC (time and allocations) around an invoker that succeeds at once, with
// no network: compare with "bare".
func BenchmarkUnaryClientInterceptor(b *testing.B) {
	conn, err := grpc.NewClient("passthrough:///bench", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	invoker := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	hedged := resilience.Default()
	hedged.Hedge = resilience.Hedge{Delay: time.Second}
	cases := []struct {
		name   string
		policy *resilience.Policy
		method string
	}{
		{"bare", nil, ledgertest.Apply},
		{"zero policy", &resilience.Policy{}, ledgertest.Apply},
		{"default write", ptr(resilience.Default()), ledgertest.Apply},
		{"default read", ptr(resilience.Default()), ledgertest.Get},
		{"hedged read", &hedged, ledgertest.Get},
	}
	req, reply := wrapperspb.String("x"), new(wrapperspb.StringValue)
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			icpt := grpc.UnaryClientInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, inv grpc.UnaryInvoker, opts ...grpc.CallOption) error {
				return inv(ctx, method, req, reply, cc, opts...)
			})
			if c.policy != nil {
				rc, err := resilience.NewClient(resilience.Config{Default: *c.policy})
				if err != nil {
					b.Fatal(err)
				}
				icpt = rc.UnaryClientInterceptor()
			}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if err := icpt(ctx, c.method, req, reply, conn, invoker); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRoundTripper measures the RoundTripper's own cost per request
// around a transport that answers at once.
func BenchmarkRoundTripper(b *testing.B) {
	next := rtFunc(func(*http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader(""))}, nil
	})
	for _, c := range []struct {
		name   string
		rt     http.RoundTripper
		method string
	}{
		{"bare", next, "GET"},
		{"default GET", mustClient(b).RoundTripper(next), "GET"},
		{"default POST", mustClient(b).RoundTripper(next), "POST"},
	} {
		b.Run(c.name, func(b *testing.B) {
			req, _ := http.NewRequest(c.method, "http://trading:8443/trades", nil)
			b.ReportAllocs()
			for b.Loop() {
				resp, err := c.rt.RoundTrip(req)
				if err != nil {
					b.Fatal(err)
				}
				_ = resp.Body.Close()
			}
		})
	}
}

// BenchmarkDefaultPolicyAdds measures what the default policy adds to a
// call whose first attempt succeeds, against the same call with no policy
// in the same run: ns/op and allocs/op are the call with the policy;
// added-allocs/op and added-ns/op the difference to the call without it
// (see overhead.Report). Issue 17's target: at most 8 added allocations.
func BenchmarkDefaultPolicyAdds(b *testing.B) {
	conn, err := grpc.NewClient("passthrough:///bench", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	invoker := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	req, reply := wrapperspb.String("x"), new(wrapperspb.StringValue)
	grpcCall := func(method string, icpt grpc.UnaryClientInterceptor) func() {
		ctx := context.Background()
		return func() {
			if icpt == nil {
				_ = invoker(ctx, method, req, reply, conn)
				return
			}
			if err := icpt(ctx, method, req, reply, conn, invoker); err != nil {
				b.Fatal(err)
			}
		}
	}
	next := rtFunc(func(*http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader(""))}, nil
	})
	httpCall := func(method string, rt http.RoundTripper) func() {
		req, _ := http.NewRequest(method, "http://trading:8443/trades", nil)
		return func() {
			resp, err := rt.RoundTrip(req)
			if err != nil {
				b.Fatal(err)
			}
			_ = resp.Body.Close()
		}
	}
	icpt := mustClient(b).UnaryClientInterceptor()
	for _, c := range []struct {
		name       string
		bare, with func()
	}{
		{"grpc write", grpcCall(ledgertest.Apply, nil), grpcCall(ledgertest.Apply, icpt)},
		{"grpc read", grpcCall(ledgertest.Get, nil), grpcCall(ledgertest.Get, icpt)},
		{"http GET", httpCall("GET", next), httpCall("GET", mustClient(b).RoundTripper(next))},
		{"http POST", httpCall("POST", next), httpCall("POST", mustClient(b).RoundTripper(next))},
	} {
		b.Run(c.name, func(b *testing.B) { overhead.Report(b, c.bare, c.with) })
	}
}

type rtFunc func(*http.Request) (*http.Response, error)

func (f rtFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func mustClient(b *testing.B) *resilience.Client {
	rc, err := resilience.NewClient(resilience.DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	return rc
}

func ptr[T any](v T) *T { return &v }
