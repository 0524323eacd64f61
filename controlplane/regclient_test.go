package controlplane_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gridmesh/gridmesh/controlplane/registration"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
)

// TestRegistrationClientFailsOver: a client naming several replicas skips
// one that cannot be reached or answers 503, and stays with the one that
// answered; a refusal (409) is final and not tried elsewhere.
func TestRegistrationClientFailsOver(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	var unavailableHits atomic.Int64
	unavailable := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		unavailableHits.Add(1)
		http.Error(w, `{"error":"consul down"}`, http.StatusServiceUnavailable)
	}))
	defer unavailable.Close()
	m := xdstest.StartMeshd(t, "", nil)
	other := xdstest.StartMeshd(t, "", nil)

	c := registration.NewClient(deadAddr, unavailable.URL, m.HTTPAddr, other.HTTPAddr)
	var answered []string
	c.OnAnswer(func(addr, store string) { answered = append(answered, addr+" "+store) })
	if err := c.Register(ctx, registrationFor("trading", "127.0.0.1:7001", 0)); err != nil {
		t.Fatalf("Register past a dead and an unavailable replica: %v", err)
	}
	if err := c.Register(ctx, registrationFor("trading", "127.0.0.1:7002", 0)); err != nil {
		t.Fatal(err)
	}
	if got := unavailableHits.Load(); got != 1 {
		t.Errorf("the unavailable replica was asked %d times, want 1 (the client stays with the replica that answered)", got)
	}
	if got := m.Stats().Registered; got != 2 {
		t.Errorf("replica registered %d endpoints, want 2", got)
	}
	want := []string{"127.0.0.1:" + port(unavailable.Listener.Addr()) + " ", m.HTTPAddr + " memory", m.HTTPAddr + " memory"}
	if d := cmpDiff(want, answered); d != "" {
		t.Errorf("answers (-want +got):\n%s", d)
	}

	// A conflict is final: the next replica, which would take it, is not asked.
	err = c.Register(ctx, registrationFor("billing", "127.0.0.1:7001", 0))
	var rerr *registration.Error
	if !errors.As(err, &rerr) || rerr.Status != http.StatusConflict {
		t.Fatalf("conflicting registration: %v, want 409", err)
	}
	if got := other.Stats().Registered; got != 0 {
		t.Errorf("a refused registration reached the next replica (%d registered there)", got)
	}
}

func port(a net.Addr) string {
	_, p, _ := net.SplitHostPort(a.String())
	return p
}
