package resilience_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/resilience"
	"github.com/gridmesh/gridmesh/resilience/internal/ledgertest"
)

// A call's first attempt runs outside the retry policy's executor (the fast
// path); only a retryable failure hands the call to the executor. These
// tests run the same scripted outcomes through the fast path and through the
// executor from the first attempt (the client before the fast path existed)
// and want the same, stated, result from each: the codes the calls returned,
// the attempts the server saw, the attempt numbers of the retries, what the
// budget denied, what the breaker rejected and how it changed state.

// outcome is what a sequence of calls did, as seen from outside the client.
type outcome struct {
	Codes         []string // per call: the code or status the caller got
	Attempts      int      // attempts that reached the server
	RetryAttempts []int    // RetryEvent.Attempt of every retry, in order
	BudgetDenied  int
	Rejected      int
	Transitions   []string
}

// recorder collects the Observer's events for an outcome.
type recorder struct {
	mu  sync.Mutex
	out outcome
}

func (r *recorder) observer() resilience.Observer {
	lock := func(f func(o *outcome)) {
		r.mu.Lock()
		defer r.mu.Unlock()
		f(&r.out)
	}
	return resilience.Observer{
		OnRetry: func(e resilience.RetryEvent) {
			lock(func(o *outcome) { o.RetryAttempts = append(o.RetryAttempts, e.Attempt) })
		},
		OnBudgetExhausted: func(resilience.BudgetEvent) { lock(func(o *outcome) { o.BudgetDenied++ }) },
		OnRejected:        func(resilience.RejectedEvent) { lock(func(o *outcome) { o.Rejected++ }) },
		OnBreakerStateChange: func(e resilience.BreakerEvent) {
			lock(func(o *outcome) { o.Transitions = append(o.Transitions, string(e.From)+"->"+string(e.To)) })
		},
	}
}

// fastPathPolicy is Default with short backoffs, a breaker that opens on 5
// failed calls in a row and stays open, and budget b.
func fastPathPolicy(b resilience.Budget) resilience.Policy {
	p := fastRetries(resilience.Default())
	p.Budget = b
	p.Breaker = resilience.Breaker{ConsecutiveFailures: 5, OpenDelay: time.Hour, HalfOpenProbes: 1}
	return p
}

// paths names the two ways a call can take: whether the fast path is on.
var paths = []struct {
	name string
	fast bool
}{{"fast path", true}, {"executor path", false}}

// halfBudget allows retries up to half the calls, with no floor.
var halfBudget = resilience.Budget{Ratio: 0.5, Window: time.Minute}

type fastPathCase struct {
	name   string
	budget resilience.Budget
	calls  [][]int // per call, the scripted answers of its attempts (0: success)
	want   outcome
}

func TestFastPathMatchesExecutorPathGRPC(t *testing.T) {
	U, I := int(codes.Unavailable), int(codes.Internal)
	tests := []fastPathCase{
		{
			name:   "first attempts succeed",
			budget: halfBudget,
			calls:  [][]int{{0}, {0}, {0}},
			want:   outcome{Codes: []string{"OK", "OK", "OK"}, Attempts: 3},
		},
		{
			name:   "retried once then succeeds",
			budget: halfBudget,
			calls:  [][]int{{0}, {0}, {U, 0}},
			want:   outcome{Codes: []string{"OK", "OK", "OK"}, Attempts: 4, RetryAttempts: []int{2}},
		},
		{
			name:   "retries run out",
			budget: halfBudget,
			calls:  [][]int{{0}, {0}, {0}, {U, U, U}},
			want:   outcome{Codes: []string{"OK", "OK", "OK", "Unavailable"}, Attempts: 6, RetryAttempts: []int{2, 3}},
		},
		{
			// Calls count into the budget on the fast path too: one call
			// earns half a retry, too little for one.
			name:   "budget denies the retry",
			budget: halfBudget,
			calls:  [][]int{{U}},
			want:   outcome{Codes: []string{"Unavailable"}, Attempts: 1, BudgetDenied: 1},
		},
		{
			name:   "error the rules do not retry",
			budget: halfBudget,
			calls:  [][]int{{0}, {0}, {I}},
			want:   outcome{Codes: []string{"OK", "OK", "Internal"}, Attempts: 3},
		},
		{
			// The fifth failed call in a row opens the breaker; the next
			// call is refused without being sent.
			name:  "breaker opens on consecutive failed calls",
			calls: [][]int{{U, U, U}, {U, U, U}, {U, U, U}, {U, U, U}, {U, U, U}, {}},
			want: outcome{
				Codes:         []string{"Unavailable", "Unavailable", "Unavailable", "Unavailable", "Unavailable", "Unavailable"},
				Attempts:      15,
				RetryAttempts: []int{2, 3, 2, 3, 2, 3, 2, 3, 2, 3},
				Rejected:      1,
				Transitions:   []string{"closed->open"},
			},
		},
		{
			// Five failed attempts in a row, but the second call's retry
			// covers two of them: one failed call, the breaker stays closed.
			name:  "attempts a retry covers do not open the breaker",
			calls: [][]int{{U, U, U}, {U, U, 0}, {0}},
			want: outcome{
				Codes:         []string{"Unavailable", "OK", "OK"},
				Attempts:      7,
				RetryAttempts: []int{2, 3, 2, 3},
			},
		},
		{
			// A first-attempt success resets the consecutive count.
			name:  "success resets the breaker's count",
			calls: [][]int{{U, U, U}, {0}, {U, U, U}},
			want: outcome{
				Codes:         []string{"Unavailable", "OK", "Unavailable"},
				Attempts:      7,
				RetryAttempts: []int{2, 3, 2, 3},
			},
		},
	}
	for _, tt := range tests {
		for _, path := range paths {
			t.Run(tt.name+"/"+path.name, func(t *testing.T) {
				srv := ledgertest.Start(t)
				var script []codes.Code
				for _, call := range tt.calls {
					for _, c := range call {
						script = append(script, codes.Code(c))
					}
				}
				srv.SetScript(script...)
				rec := &recorder{}
				rc, err := resilience.NewClient(resilience.Config{Default: fastPathPolicy(tt.budget)}, resilience.WithObserver(rec.observer()))
				if err != nil {
					t.Fatal(err)
				}
				resilience.SetFastPath(rc, path.fast)
				conn, err := grpc.NewClient("passthrough:///"+srv.Addr,
					grpc.WithTransportCredentials(insecure.NewCredentials()),
					grpc.WithDisableRetry(),
					grpc.WithUnaryInterceptor(rc.UnaryClientInterceptor()))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = conn.Close() })
				ctx := testCtx(t, 30*time.Second)

				var codesGot []string
				for i := range tt.calls {
					_, err := ledgertest.Call(ctx, conn, ledgertest.Get, fmt.Sprint(i))
					codesGot = append(codesGot, status.Code(err).String())
				}
				rec.mu.Lock()
				got := rec.out
				rec.mu.Unlock()
				got.Codes = codesGot
				got.Attempts = int(srv.Attempts(ledgertest.Get))
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("outcome (-want +got):\n%s", diff)
				}
			})
		}
	}
}

func TestFastPathMatchesExecutorPathHTTP(t *testing.T) {
	tests := []fastPathCase{
		{
			name:   "first attempts succeed",
			budget: halfBudget,
			calls:  [][]int{{200}, {200}, {200}},
			want:   outcome{Codes: []string{"200", "200", "200"}, Attempts: 3},
		},
		{
			name:   "retried once then succeeds",
			budget: halfBudget,
			calls:  [][]int{{200}, {200}, {503, 200}},
			want:   outcome{Codes: []string{"200", "200", "200"}, Attempts: 4, RetryAttempts: []int{2}},
		},
		{
			// The last response is returned when the retries run out.
			name:   "retries run out",
			budget: halfBudget,
			calls:  [][]int{{200}, {200}, {200}, {503, 503, 503}},
			want:   outcome{Codes: []string{"200", "200", "200", "503"}, Attempts: 6, RetryAttempts: []int{2, 3}},
		},
		{
			name:   "budget denies the retry",
			budget: halfBudget,
			calls:  [][]int{{503}},
			want:   outcome{Codes: []string{"503"}, Attempts: 1, BudgetDenied: 1},
		},
		{
			name:   "status the rules do not retry",
			budget: halfBudget,
			calls:  [][]int{{200}, {200}, {500}},
			want:   outcome{Codes: []string{"200", "200", "500"}, Attempts: 3},
		},
		{
			name:  "breaker opens on consecutive failed calls",
			calls: [][]int{{503, 503, 503}, {503, 503, 503}, {503, 503, 503}, {503, 503, 503}, {503, 503, 503}, {}},
			want: outcome{
				Codes:         []string{"503", "503", "503", "503", "503", "error"},
				Attempts:      15,
				RetryAttempts: []int{2, 3, 2, 3, 2, 3, 2, 3, 2, 3},
				Rejected:      1,
				Transitions:   []string{"closed->open"},
			},
		},
		{
			name:  "attempts a retry covers do not open the breaker",
			calls: [][]int{{503, 503, 503}, {503, 503, 200}, {200}},
			want: outcome{
				Codes:         []string{"503", "200", "200"},
				Attempts:      7,
				RetryAttempts: []int{2, 3, 2, 3},
			},
		},
		{
			name:  "success resets the breaker's count",
			calls: [][]int{{503, 503, 503}, {200}, {503, 503, 503}},
			want: outcome{
				Codes:         []string{"503", "200", "503"},
				Attempts:      7,
				RetryAttempts: []int{2, 3, 2, 3},
			},
		},
	}
	for _, tt := range tests {
		for _, path := range paths {
			t.Run(tt.name+"/"+path.name, func(t *testing.T) {
				var (
					mu     sync.Mutex
					script []int
					hits   int
				)
				for _, call := range tt.calls {
					script = append(script, call...)
				}
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
					mu.Lock()
					code := http.StatusOK
					if hits < len(script) {
						code = script[hits]
					}
					hits++
					mu.Unlock()
					w.WriteHeader(code)
					_, _ = io.WriteString(w, http.StatusText(code))
				}))
				t.Cleanup(srv.Close)
				rec := &recorder{}
				rc, err := resilience.NewClient(resilience.Config{Default: fastPathPolicy(tt.budget)}, resilience.WithObserver(rec.observer()))
				if err != nil {
					t.Fatal(err)
				}
				resilience.SetFastPath(rc, path.fast)
				hc := httpClient(t, rc)
				ctx := testCtx(t, 30*time.Second)

				var codesGot []string
				for range tt.calls {
					req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/read", nil)
					if err != nil {
						t.Fatal(err)
					}
					resp, err := hc.Do(req)
					if err != nil {
						codesGot = append(codesGot, "error")
						continue
					}
					body, _ := io.ReadAll(resp.Body)
					_ = resp.Body.Close()
					if want := http.StatusText(resp.StatusCode); string(body) != want {
						t.Errorf("body = %q, want %q: the returned response is not the last attempt's", body, want)
					}
					codesGot = append(codesGot, fmt.Sprint(resp.StatusCode))
				}
				rec.mu.Lock()
				got := rec.out
				rec.mu.Unlock()
				got.Codes = codesGot
				mu.Lock()
				got.Attempts = hits
				mu.Unlock()
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("outcome (-want +got):\n%s", diff)
				}
			})
		}
	}
}
