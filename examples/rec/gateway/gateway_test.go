package gateway_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/examples/rec/gateway"
	"github.com/gridmesh/gridmesh/examples/rec/recpb"
	"github.com/gridmesh/gridmesh/examples/rec/rectest"
	"github.com/gridmesh/gridmesh/resilience/idempotency"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// down is a trading client whose every call fails as if the instance were
// unreachable.
type down struct{ recpb.TradingClient }

func (down) PlaceOrder(context.Context, *recpb.PlaceOrderRequest, ...grpc.CallOption) (*recpb.Order, error) {
	return nil, status.Error(codes.Unavailable, "connection refused")
}

func TestPlaceOrder(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := rectest.New(t)
	p.Seed(t, &recpb.Market{EnergySource: "solar", Vintage: 2024}, 1_000_000, 10, "p01")
	clients := gateway.Clients{Trading: p.TradingC, Registry: p.RegistryC, Accounts: p.AccountsC}
	srv := httptest.NewServer(gateway.Handler(clients, idempotency.NewMemoryStore(0)))
	defer srv.Close()
	defer srv.Client().CloseIdleConnections()
	broken := httptest.NewServer(gateway.Handler(gateway.Clients{Trading: down{}}, idempotency.NewMemoryStore(0)))
	defer broken.Close()
	defer broken.Client().CloseIdleConnections()

	body := `{"participant":"p01","energy_source":"solar","vintage":2024,"side":"sell","price_cents":1500,"mwh":4}`
	post := func(url, key, body string) (*http.Response, map[string]any) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/orders", strings.NewReader(body))
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		json.NewDecoder(resp.Body).Decode(&m)
		return resp, m
	}

	if resp, _ := post(srv.URL, "", body); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("without a key: %d, want 400", resp.StatusCode)
	}
	resp, first := post(srv.URL, "k1", body)
	if resp.StatusCode != http.StatusCreated || first["order_id"] != gateway.OrderID("p01", "k1") || first["status"] != "OPEN" {
		t.Fatalf("place: %d %v", resp.StatusCode, first)
	}
	resp, again := post(srv.URL, "k1", body)
	if resp.StatusCode != http.StatusCreated || again["order_id"] != first["order_id"] || resp.Header.Get(idempotency.ReplayedHeader) != "true" {
		t.Errorf("repeat: %d %v (replayed %q), want the first answer replayed", resp.StatusCode, again, resp.Header.Get(idempotency.ReplayedHeader))
	}
	if resp, _ := post(srv.URL, "k1", strings.Replace(body, `"mwh":4`, `"mwh":5`, 1)); resp.StatusCode != http.StatusUnprocessableEntity {
		t.Errorf("another order under a used key: %d, want 422", resp.StatusCode)
	}
	resp, rej := post(srv.URL, "k2", strings.Replace(body, `"mwh":4`, `"mwh":40`, 1))
	if resp.StatusCode != http.StatusUnprocessableEntity || rej["status"] != "REJECTED" {
		t.Errorf("oversized sell: %d %v, want 422 REJECTED", resp.StatusCode, rej)
	}
	// An unreachable trading service is 503 with Retry-After, and not
	// stored: the client's repeat runs again.
	for range 2 {
		resp, _ := post(broken.URL, "k3", body)
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || resp.Header.Get(idempotency.ReplayedHeader) != "" {
			t.Errorf("trading down: %d (Retry-After %q, replayed %q), want 503 with Retry-After, not replayed",
				resp.StatusCode, resp.Header.Get("Retry-After"), resp.Header.Get(idempotency.ReplayedHeader))
		}
	}
	if !gateway.IsRetryable(http.StatusServiceUnavailable) || !gateway.IsRetryable(http.StatusConflict) || gateway.IsRetryable(http.StatusUnprocessableEntity) {
		t.Errorf("IsRetryable: 503 and 409 (in flight) must be retried, 422 not")
	}
}
