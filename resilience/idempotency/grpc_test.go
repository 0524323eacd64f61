package idempotency_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/resilience/idempotency"
	"github.com/gridmesh/gridmesh/resilience/internal/ledgertest"
)

// callerFromMetadata stands in for the mesh's SPIFFE ID lookup.
func callerFromMetadata(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("test-caller"); len(v) > 0 {
		return v[0]
	}
	return "spiffe://test/a"
}

func startLedger(t *testing.T) (*ledgertest.Server, *grpc.ClientConn) {
	t.Helper()
	ids := idempotency.NewServer(idempotency.NewMemoryStore(time.Hour), callerFromMetadata)
	srv := ledgertest.Start(t, grpc.ChainUnaryInterceptor(ids.UnaryServerInterceptor()))
	conn, err := grpc.NewClient("passthrough:///"+srv.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return srv, conn
}

type result struct {
	Value    string
	Code     codes.Code
	Replayed bool
	Applied  int64
}

func apply(ctx context.Context, srv *ledgertest.Server, conn *grpc.ClientConn, caller, key, value string) result {
	if key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, idempotency.MetadataKey, key)
	}
	ctx = metadata.AppendToOutgoingContext(ctx, "test-caller", caller)
	var hdr metadata.MD
	v, err := ledgertest.Call(ctx, conn, ledgertest.Apply, value, grpc.Header(&hdr))
	return result{Value: v, Code: status.Code(err), Replayed: len(hdr.Get(idempotency.ReplayedMetadataKey)) > 0, Applied: srv.Applied()}
}

func TestUnaryInterceptorSequence(t *testing.T) {
	srv, conn := startLedger(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const a, b = "spiffe://test/a", "spiffe://test/b"
	steps := []struct {
		name               string
		caller, key, value string
		want               result
	}{
		{"first call runs", a, "k1", "x", result{Value: "applied x", Applied: 1}},
		{"repeat is replayed", a, "k1", "x", result{Value: "applied x", Replayed: true, Applied: 1}},
		{"same key different request refused", a, "k1", "y", result{Code: codes.InvalidArgument, Applied: 1}},
		{"another caller's key is its own", b, "k1", "y", result{Value: "applied y", Applied: 2}},
		{"no key runs", a, "", "x", result{Value: "applied x", Applied: 3}},
		{"no key runs again", a, "", "x", result{Value: "applied x", Applied: 4}},
	}
	for _, s := range steps {
		got := apply(ctx, srv, conn, s.caller, s.key, s.value)
		if diff := cmp.Diff(s.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", s.name, diff)
		}
	}
}

func TestUnaryInterceptorInFlightRefused(t *testing.T) {
	srv, conn := startLedger(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.SetMode(ledgertest.Block)
	first := make(chan result, 1)
	go func() { first <- apply(ctx, srv, conn, "a", "k2", "x") }()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for srv.Attempts(ledgertest.Apply) == 0 {
		select {
		case <-ctx.Done():
			t.Fatal("first call never reached the handler")
		case <-tick.C:
		}
	}
	if got := apply(ctx, srv, conn, "a", "k2", "x"); got.Code != codes.Aborted {
		t.Errorf("second call while the first is in flight: %+v, want ABORTED", got)
	}
	srv.Unblock()
	if got := <-first; got.Code != codes.OK {
		t.Errorf("first call: %+v", got)
	}
	want := result{Value: "applied x", Replayed: true, Applied: 1}
	if diff := cmp.Diff(want, apply(ctx, srv, conn, "a", "k2", "x")); diff != "" {
		t.Errorf("after completion (-want +got):\n%s", diff)
	}
}

// A transient failure commits nothing by contract, so the key is released
// and the retry runs the handler.
func TestUnaryInterceptorTransientFailureReleasesKey(t *testing.T) {
	srv, conn := startLedger(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.SetMode(ledgertest.Unavailable)
	if got := apply(ctx, srv, conn, "a", "k3", "x"); got.Code != codes.Unavailable {
		t.Fatalf("failing call: %+v, want UNAVAILABLE", got)
	}
	srv.SetMode(ledgertest.Healthy)
	want := result{Value: "applied x", Applied: 1}
	if diff := cmp.Diff(want, apply(ctx, srv, conn, "a", "k3", "x")); diff != "" {
		t.Errorf("retry (-want +got):\n%s", diff)
	}
}

func TestUnaryInterceptorKeyTooLong(t *testing.T) {
	srv, conn := startLedger(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := apply(ctx, srv, conn, "a", strings.Repeat("k", idempotency.MaxKeyLen+1), "x")
	if got.Code != codes.InvalidArgument || got.Applied != 0 {
		t.Errorf("got %+v, want INVALID_ARGUMENT and nothing applied", got)
	}
}

// BenchmarkUnaryInterceptor measures the middleware's cost per call on the
// replay path and on the keyless pass-through, without a network.
func BenchmarkUnaryInterceptor(b *testing.B) {
	ids := idempotency.NewServer(idempotency.NewMemoryStore(time.Hour), nil)
	icpt := ids.UnaryServerInterceptor()
	info := &grpc.UnaryServerInfo{FullMethod: ledgertest.Apply}
	var runs atomic.Int64
	handler := func(ctx context.Context, req any) (any, error) { runs.Add(1); return req, nil }
	req := wrapString("trade")
	b.Run("keyless", func(b *testing.B) {
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			_, _ = icpt(ctx, req, info, handler)
		}
	})
	b.Run("replay", func(b *testing.B) {
		ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(idempotency.MetadataKey, "k"))
		ctx = grpc.NewContextWithServerTransportStream(ctx, nopStream{})
		b.ReportAllocs()
		for b.Loop() {
			_, _ = icpt(ctx, req, info, handler)
		}
	})
}

type nopStream struct{}

func (nopStream) Method() string               { return ledgertest.Apply }
func (nopStream) SetHeader(metadata.MD) error  { return nil }
func (nopStream) SendHeader(metadata.MD) error { return nil }
func (nopStream) SetTrailer(metadata.MD) error { return nil }
