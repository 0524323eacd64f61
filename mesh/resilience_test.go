package mesh_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/resilience"
	"github.com/gridmesh/gridmesh/resilience/idempotency"
)

// TestIdempotencyKeyAppliesOnce: a keyed write sent twice runs the handler
// once and the repeat gets the first answer; the key with another request
// is refused; another caller's same key is its own.
func TestIdempotencyKeyAppliesOnce(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	svc := &echoService{}
	addr := startServer(t, svc, mesh.WithIdentity(devSource(t, ca, "/settlement")),
		mesh.WithIdempotency(idempotency.NewMemoryStore(time.Hour)))
	alice := dial(t, addr, mesh.WithIdentity(devSource(t, ca, "/alice")))
	bob := dial(t, addr, mesh.WithIdentity(devSource(t, ca, "/bob")))

	ctx := resilience.WithIdempotencyKey(callTimeout(t), "transfer-42")
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("40 MWh")}}
	for i := 0; i < 3; i++ {
		resp, err := alice.UnaryCall(ctx, req)
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if string(resp.GetPayload().GetBody()) != "40 MWh" {
			t.Fatalf("call %d answered %q", i, resp.GetPayload().GetBody())
		}
	}
	if n := svc.calls.Load(); n != 1 {
		t.Errorf("handler ran %d times for one key, want 1", n)
	}
	_, err := alice.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("41 MWh")}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("same key, other request: %v, want InvalidArgument", err)
	}
	if _, err := bob.UnaryCall(ctx, req); err != nil {
		t.Fatalf("bob's call: %v", err)
	}
	if n := svc.calls.Load(); n != 2 {
		t.Errorf("handler ran %d times, want 2 (bob's key is his own)", n)
	}
}

func TestWithResiliencePolicyRefusesInvalidConfig(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	cfg := resilience.DefaultConfig()
	cfg.Default.Retry.MaxAttempts = -1
	_, err := mesh.Dial(callTimeout(t), "127.0.0.1:1", mesh.WithIdentity(devSource(t, ca, "/gateway")), mesh.WithResiliencePolicy(cfg))
	if err == nil || !strings.Contains(err.Error(), "WithResiliencePolicy") {
		t.Fatalf("Dial with an invalid policy: err = %v, want one naming WithResiliencePolicy and the field", err)
	}
	t.Log(err)
}
