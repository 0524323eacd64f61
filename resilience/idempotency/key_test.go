package idempotency_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/resilience/idempotency"
)

// keyCases are idempotency key values as sent (more than one: the key sent
// several times) and whether the middleware accepts them.
var keyCases = []struct {
	name   string
	values []string
	ok     bool
	want   string // in the refusal
	// netHTTP: net/http's server refuses the header itself, before any
	// handler, with a plain 400.
	netHTTP bool
}{
	{"UUID", []string{"7f3c9a2e-51b4-4c1e-9a4f-2d6b8e0c1a77"}, true, "", false},
	{"printable with a space", []string{"order 17"}, true, "", false},
	{"255 bytes", []string{strings.Repeat("k", 255)}, true, "", false},
	{"empty", []string{""}, false, "is empty", false},
	{"256 bytes", []string{strings.Repeat("k", 256)}, false, "is 256 bytes; the limit is 255", false},
	{"tab", []string{"k\tx"}, false, "byte 0x09 at offset 1", false},
	{"DEL", []string{"k\x7f"}, false, "byte 0x7f at offset 1", true},
	{"UTF-8 outside ASCII", []string{"kl\u00fcssel"}, false, "byte 0xc3 at offset 2", false},
	{"invalid UTF-8", []string{"k\xff"}, false, "byte 0xff at offset 1", false},
	{"sent twice", []string{"k1", "k2"}, false, "appears 2 times", false},
}

// TestKeysValidatedGRPC drives the interceptor with metadata as grpc-go
// hands it over (grpc-go clients refuse to send some of these values, other
// clients do not).
func TestKeysValidatedGRPC(t *testing.T) {
	ids := idempotency.NewServer(idempotency.NewMemoryStore(time.Hour), func(context.Context) string { return "spiffe://test/a" })
	icpt := ids.UnaryServerInterceptor()
	info := &grpc.UnaryServerInfo{FullMethod: "/grpc.testing.TestService/UnaryCall"}
	for i, tc := range keyCases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			md := metadata.MD{}
			for _, v := range tc.values {
				md.Append(idempotency.MetadataKey, v)
			}
			ctx = grpc.NewContextWithServerTransportStream(metadata.NewIncomingContext(ctx, md), nopStream{})
			var ran atomic.Bool
			_, err := icpt(ctx, wrapString(fmt.Sprint(i)), info, func(context.Context, any) (any, error) {
				ran.Store(true)
				return wrapString("ok"), nil
			})
			if tc.ok {
				if err != nil || !ran.Load() {
					t.Errorf("err = %v, handler ran %v; want it run", err, ran.Load())
				}
				return
			}
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.want) || ran.Load() {
				t.Errorf("err = %v, handler ran %v; want INVALID_ARGUMENT containing %q and no run", err, ran.Load(), tc.want)
			}
		})
	}
}

// TestKeysValidatedHTTP sends the requests on a raw connection, because
// net/http's client refuses to write some of these header values.
func TestKeysValidatedHTTP(t *testing.T) {
	var runs atomic.Int64
	ids := idempotency.NewServer(idempotency.NewMemoryStore(time.Hour), func(context.Context) string { return "spiffe://test/a" })
	ts := httptest.NewServer(ids.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		fmt.Fprint(w, "ok")
	})))
	defer ts.Close()
	for i, tc := range keyCases {
		t.Run(tc.name, func(t *testing.T) {
			before := runs.Load()
			var req strings.Builder
			fmt.Fprintf(&req, "POST /orders HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\nConnection: close\r\n", len(fmt.Sprint(i)))
			for _, v := range tc.values {
				fmt.Fprintf(&req, "%s: %s\r\n", idempotency.Header, v)
			}
			fmt.Fprintf(&req, "\r\n%d", i)
			resp, body := rawRoundTrip(t, ts.Listener.Addr().String(), req.String())
			ran := runs.Load() != before
			if tc.ok {
				if resp.StatusCode != http.StatusOK || !ran {
					t.Errorf("status %d %q, handler ran %v; want 200 and a run", resp.StatusCode, body, ran)
				}
				return
			}
			want := tc.want
			if tc.netHTTP {
				want = "Bad Request"
			}
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, want) || ran {
				t.Errorf("status %d %q, handler ran %v; want 400 containing %q and no run", resp.StatusCode, body, ran, want)
			}
		})
	}
}

func rawRoundTrip(t *testing.T, addr, req string) (*http.Response, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	_, _ = bufio.NewReader(resp.Body).WriteTo(&b)
	return resp, b.String()
}
