package meshtel_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/gridmesh/gridmesh/internal/meshtel"
)

// TestClientOptionsNotShared: the call interceptor adds its grpc.Peer
// option without writing into the caller's options, and hands on options
// with no room to spare, so that interceptors further in (hedged attempts
// appending their own options at once) never write into a shared array.
func TestClientOptionsNotShared(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p := &meshtel.Pipeline{Hub: meshtel.NewHub(), Self: "spiffe://example.org/client"}
	unary, _ := p.ClientInterceptors("static:///trading")
	for _, n := range []int{0, 1, 3, 4, 6} { // under and over the room kept with the peer
		callers := make([]grpc.CallOption, n, n+4)
		for i := range callers {
			callers[i] = grpc.StaticMethod()
		}
		var handedOn []grpc.CallOption
		invoker := func(_ context.Context, _ string, _, _ any, _ *grpc.ClientConn, opts ...grpc.CallOption) error {
			handedOn = opts
			return nil
		}
		if err := unary(ctx, "/rec.Trading/Buy", nil, nil, nil, invoker, callers...); err != nil {
			t.Fatal(err)
		}
		if len(handedOn) != n+1 || cap(handedOn) != len(handedOn) {
			t.Errorf("%d options: handed on %d with capacity %d, want %d and no room to spare", n, len(handedOn), cap(handedOn), n+1)
		}
		if spare := callers[:n+1][n]; spare != nil {
			t.Errorf("%d options: the caller's array was written to: %T", n, spare)
		}
	}
}
