package resilience_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gridmesh/gridmesh/resilience"
	"github.com/gridmesh/gridmesh/resilience/idempotency"
)

// scripted answers failStatus to the first fails requests, then 200, and
// records every body it received.
type scripted struct {
	failStatus int
	fails      int64
	hits       atomic.Int64
	mu         sync.Mutex
	bodies     []string
}

func (s *scripted) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	s.bodies = append(s.bodies, string(b))
	s.mu.Unlock()
	if n := s.hits.Add(1); s.fails < 0 || n <= s.fails {
		w.WriteHeader(s.failStatus)
		_, _ = io.WriteString(w, "failing")
		return
	}
	_, _ = io.WriteString(w, "ok")
}

func httpClient(t testing.TB, rc *resilience.Client) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: rc.RoundTripper(tr)}
}

func TestRoundTripperRetryRules(t *testing.T) {
	tests := []struct {
		name       string
		method     string
		body       string
		key        bool
		xkey       bool // X-Idempotency-Key: not an idempotency key
		failStatus int
		fails      int64 // -1: always
		noRetry    bool
		wantHits   int64
		wantStatus int
	}{
		{name: "GET 503 retried until attempts run out", method: "GET", failStatus: 503, fails: -1, wantHits: 3, wantStatus: 503},
		{name: "GET 503 once", method: "GET", failStatus: 503, fails: 1, wantHits: 2, wantStatus: 200},
		{name: "GET 500 not retried", method: "GET", failStatus: 500, fails: -1, wantHits: 1, wantStatus: 500},
		{name: "POST 503 not retried", method: "POST", body: "trade", failStatus: 503, fails: -1, wantHits: 1, wantStatus: 503},
		{name: "POST 502 with key retried", method: "POST", body: "trade", key: true, failStatus: 502, fails: 1, wantHits: 2, wantStatus: 200},
		{name: "POST 409 with key retried (in flight)", method: "POST", body: "trade", key: true, failStatus: 409, fails: 2, wantHits: 3, wantStatus: 200},
		{name: "POST 502 with X-Idempotency-Key not retried", method: "POST", body: "trade", xkey: true, failStatus: 502, fails: 1, wantHits: 1, wantStatus: 502},
		{name: "POST 500 with key not retried", method: "POST", body: "trade", key: true, failStatus: 500, fails: -1, wantHits: 1, wantStatus: 500},
		{name: "PUT 503 not retried by default", method: "PUT", body: "x", failStatus: 503, fails: -1, wantHits: 1, wantStatus: 503},
		{name: "GET 503 without retries returns the response", method: "GET", failStatus: 503, fails: -1, noRetry: true, wantHits: 1, wantStatus: 503},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &scripted{failStatus: tt.failStatus, fails: tt.fails}
			ts := httptest.NewServer(h)
			defer ts.Close()
			p := fastRetries(resilience.Default())
			if tt.noRetry {
				p.Retry.MaxAttempts = 1
			}
			rc, _ := newClient(t, p)
			ctx := testCtx(t, 10*time.Second)
			req, err := http.NewRequestWithContext(ctx, tt.method, ts.URL+"/trades", strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if tt.key {
				req.Header.Set(idempotency.Header, "k1")
			}
			if tt.xkey {
				req.Header.Set("X-Idempotency-Key", "k1")
			}
			resp, err := httpClient(t, rc).Do(req)
			if err != nil {
				t.Fatalf("Do: %v", err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			got := map[string]int64{"hits": h.hits.Load(), "status": int64(resp.StatusCode)}
			want := map[string]int64{"hits": tt.wantHits, "status": int64(tt.wantStatus)}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			for i, b := range h.bodies {
				if b != tt.body {
					t.Errorf("attempt %d body = %q, want %q", i+1, b, tt.body)
				}
			}
		})
	}
}

// A POST that never reached a server (connection refused) is retried.
func TestRoundTripperNeverSentPostIsRetried(t *testing.T) {
	rc, ev := newClient(t, fastRetries(resilience.Default()))
	req, err := http.NewRequestWithContext(testCtx(t, 10*time.Second), "POST", "http://"+closedPort(t)+"/trades", strings.NewReader("trade"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := httpClient(t, rc).Do(req); err == nil {
		t.Fatal("Do succeeded against a closed port")
	}
	if got := ev.retries.Load(); got != 2 {
		t.Errorf("retries = %d, want 2", got)
	}
}

// sentMark is a transport error that says whether the request was sent.
type sentMark struct{ sent bool }

func (e sentMark) Error() string { return fmt.Sprintf("endpoint failed (sent: %v)", e.sent) }
func (e sentMark) NotSent() bool { return !e.sent }

// A POST without a key is retried after a transport error only when the
// error is a NotSentError whose NotSent is true; the retry replays the
// body.
func TestRoundTripperRetriesOnlyNotSentMarkedPOST(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		wantHits int64
		wantOK   bool
	}{
		{"marked not sent", fmt.Errorf("mesh: endpoint 10.0.0.1:8443: %w", sentMark{sent: false}), 2, true},
		{"may have been sent", fmt.Errorf("mesh: endpoint 10.0.0.1:8443: %w", sentMark{sent: true}), 1, false},
		{"unmarked", io.ErrUnexpectedEOF, 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hits atomic.Int64
			var bodies []string
			next := rtFunc(func(r *http.Request) (*http.Response, error) {
				b, _ := io.ReadAll(r.Body)
				r.Body.Close()
				bodies = append(bodies, string(b))
				if hits.Add(1) == 1 {
					return nil, tt.err
				}
				rec := httptest.NewRecorder()
				io.WriteString(rec, "ok")
				return rec.Result(), nil
			})
			rc, _ := newClient(t, fastRetries(resilience.Default()))
			req, err := http.NewRequestWithContext(testCtx(t, 10*time.Second), "POST", "http://trading/trades", strings.NewReader("trade"))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := rc.RoundTripper(next).RoundTrip(req)
			if err == nil {
				resp.Body.Close()
			}
			if hits.Load() != tt.wantHits || (err == nil) != tt.wantOK {
				t.Errorf("%d attempts, err %v; want %d attempts, success %v", hits.Load(), err, tt.wantHits, tt.wantOK)
			}
			for i, b := range bodies {
				if b != "trade" {
					t.Errorf("attempt %d body = %q, want %q", i+1, b, "trade")
				}
			}
		})
	}
}

// A hedged GET: the slow first copy is canceled when the hedge answers.
func TestRoundTripperHedgedGetCancelsLoser(t *testing.T) {
	var hits, canceled atomic.Int64
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			<-r.Context().Done()
			canceled.Add(1)
			return
		}
		_, _ = io.WriteString(w, "fast")
	}))
	defer ts.Close()
	p := resilience.Default()
	p.Hedge = resilience.Hedge{Delay: 20 * time.Millisecond}
	rc, ev := newClient(t, p)
	ctx := testCtx(t, 10*time.Second)
	req, _ := http.NewRequestWithContext(ctx, "GET", ts.URL+"/quotes", nil)
	resp, err := httpClient(t, rc).Do(req)
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if string(b) != "fast" {
		t.Errorf("body = %q, want the hedge's %q", b, "fast")
	}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for canceled.Load() == 0 {
		select {
		case <-ctx.Done():
			t.Fatal("the slow copy was never canceled")
		case <-tick.C:
		}
	}
	if diff := cmp.Diff(map[string]int64{"hits": 2, "hedges": 1}, map[string]int64{"hits": hits.Load(), "hedges": ev.hedges.Load()}); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// A POST is never hedged, even with a key.
func TestRoundTripperPostNeverHedged(t *testing.T) {
	release := make(chan struct{})
	var hits atomic.Int64
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		<-release
	}))
	defer ts.Close()
	p := resilience.Default()
	const delay = 5 * time.Millisecond
	p.Hedge = resilience.Hedge{Delay: delay, MaxHedges: 2}
	rc, ev := newClient(t, p)
	ctx := testCtx(t, 10*time.Second)
	req, _ := http.NewRequestWithContext(ctx, "POST", ts.URL+"/trades", strings.NewReader("t"))
	req.Header.Set(idempotency.Header, "k")
	go func() {
		<-time.After(20 * delay) // well past the hedge delays
		close(release)
	}()
	resp, err := httpClient(t, rc).Do(req)
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	_ = resp.Body.Close()
	if diff := cmp.Diff(map[string]int64{"hits": 1, "hedges": 0}, map[string]int64{"hits": hits.Load(), "hedges": ev.hedges.Load()}); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// The overall timeout ends a slow request; the context is released when
// the body of a successful response is closed.
func TestRoundTripperTimeout(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-r.Context().Done()
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	defer ts.Close()
	p := resilience.Default()
	p.Timeout = 50 * time.Millisecond
	rc, _ := newClient(t, p)
	c := httpClient(t, rc)
	req, _ := http.NewRequestWithContext(context.Background(), "POST", ts.URL+"/slow", nil)
	if _, err := c.Do(req); err == nil {
		t.Error("slow request succeeded, want a timeout")
	}
	req, _ = http.NewRequestWithContext(context.Background(), "GET", ts.URL+"/fast", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("fast request: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil || string(b) != "ok" {
		t.Errorf("body = %q, %v; want %q", b, err, "ok")
	}
}

type notSent struct{}

func (notSent) Error() string { return "endpoint unreachable" }
func (notSent) NotSent() bool { return true }

// A transport error marked NotSent lets even a POST be retried.
func TestRoundTripperNotSentErrorIsRetried(t *testing.T) {
	var calls atomic.Int64
	next := rtFunc(func(*http.Request) (*http.Response, error) {
		calls.Add(1)
		return nil, fmt.Errorf("mesh: trading endpoint 10.0.0.1:8443: %w", notSent{})
	})
	rc, _ := newClient(t, fastRetries(resilience.Default()))
	req, _ := http.NewRequestWithContext(testCtx(t, 10*time.Second), "POST", "http://trading.mesh/trades", strings.NewReader("t"))
	if _, err := rc.RoundTripper(next).RoundTrip(req); err == nil {
		t.Fatal("RoundTrip succeeded")
	}
	if got := calls.Load(); got != 3 {
		t.Errorf("attempts = %d, want 3", got)
	}
}
