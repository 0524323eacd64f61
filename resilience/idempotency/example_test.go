package idempotency_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/gridmesh/gridmesh/resilience/idempotency"
)

func ExampleServer_Handler() {
	trades := 0
	book := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		trades++
		fmt.Fprintf(w, "trade #%d booked", trades)
	})
	caller := func(context.Context) string { return "spiffe://rec.example/buyer" }
	h := idempotency.NewServer(idempotency.NewMemoryStore(24*time.Hour), caller).Handler(book)

	post := func(key, body string) {
		req := httptest.NewRequest("POST", "/trades", strings.NewReader(body))
		req.Header.Set(idempotency.Header, key)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		b, _ := io.ReadAll(rec.Body)
		fmt.Println(rec.Code, rec.Header().Get(idempotency.ReplayedHeader), strings.TrimSpace(string(b)))
	}
	post("7f3c", "100 MWh")
	post("7f3c", "100 MWh") // a retry: the stored result, not a second trade
	post("7f3c", "200 MWh") // the same key for another trade: refused
	// Output:
	// 200  trade #1 booked
	// 200 true trade #1 booked
	// 422  Idempotency-Key "7f3c" was already used for a different request; use a new key for a new request
}
