package idempotency_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gridmesh/gridmesh/resilience/idempotency"
)

type httpResult struct {
	Status   int
	Body     string
	Replayed bool
	Applied  int64
}

func TestHandlerSequence(t *testing.T) {
	var applied atomic.Int64
	fail := atomic.Bool{}
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	block := atomic.Bool{}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if block.Load() {
			entered <- struct{}{}
			<-release
		}
		if fail.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		b, _ := io.ReadAll(r.Body)
		n := applied.Add(1)
		w.Header().Set("X-Trade", string(b))
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, "trade "+string(b)+" #"+string(rune('0'+n)))
	})
	ids := idempotency.NewServer(idempotency.NewMemoryStore(time.Hour), func(ctx context.Context) string {
		return ctx.Value(callerKey{}).(string)
	})
	ts := httptest.NewServer(withCaller(ids.Handler(h)))
	defer ts.Close()
	defer ts.Client().CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	do := func(caller, key, body string) httpResult {
		req, _ := http.NewRequestWithContext(ctx, "POST", ts.URL+"/trades", strings.NewReader(body))
		if key != "" {
			req.Header.Set(idempotency.Header, key)
		}
		req.Header.Set("Test-Caller", caller)
		resp, err := ts.Client().Do(req)
		if err != nil {
			t.Fatalf("POST: %v", err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return httpResult{Status: resp.StatusCode, Body: string(b), Replayed: resp.Header.Get(idempotency.ReplayedHeader) == "true", Applied: applied.Load()}
	}

	steps := []struct {
		name              string
		caller, key, body string
		want              httpResult
	}{
		{"first runs", "a", "k1", "x", httpResult{Status: 201, Body: "trade x #1", Applied: 1}},
		{"repeat replayed", "a", "k1", "x", httpResult{Status: 201, Body: "trade x #1", Replayed: true, Applied: 1}},
		{"different body refused", "a", "k1", "y", httpResult{Status: 422, Body: "Idempotency-Key \"k1\" was already used for a different request; use a new key for a new request\n", Applied: 1}},
		{"other caller runs", "b", "k1", "y", httpResult{Status: 201, Body: "trade y #2", Applied: 2}},
		{"no key runs", "a", "", "x", httpResult{Status: 201, Body: "trade x #3", Applied: 3}},
	}
	for _, s := range steps {
		if diff := cmp.Diff(s.want, do(s.caller, s.key, s.body)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", s.name, diff)
		}
	}

	// 503 releases the key; the retry runs.
	fail.Store(true)
	if got := do("a", "k2", "z"); got.Status != 503 {
		t.Errorf("failing call: %+v, want 503", got)
	}
	fail.Store(false)
	if diff := cmp.Diff(httpResult{Status: 201, Body: "trade z #4", Applied: 4}, do("a", "k2", "z")); diff != "" {
		t.Errorf("after 503 (-want +got):\n%s", diff)
	}

	// In flight: 409.
	block.Store(true)
	first := make(chan httpResult, 1)
	go func() { first <- do("a", "k3", "w") }()
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("first request never reached the handler")
	}
	if got := do("a", "k3", "w"); got.Status != http.StatusConflict {
		t.Errorf("second request while the first is in flight: %+v, want 409", got)
	}
	close(release)
	if r := <-first; r.Status != 201 {
		t.Errorf("first in-flight request: %+v", r)
	}
}

type callerKey struct{}

func withCaller(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, r.Header.Get("Test-Caller"))))
	})
}
