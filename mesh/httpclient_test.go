package mesh_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/internal/testutil/pki"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/resilience"
	"github.com/gridmesh/gridmesh/resilience/idempotency"
)

type backend struct {
	h    *httpEcho
	addr string
	stop func()
}

func startBackends(t *testing.T, n int, opts ...mesh.ServerOption) []backend {
	t.Helper()
	var out []backend
	for i := range n {
		h := &httpEcho{name: fmt.Sprintf("b%d", i)}
		addr, stop := startHTTPServer(t, h, opts...)
		out = append(out, backend{h, addr, stop})
	}
	return out
}

func staticTarget(bs []backend, spiffeID string) string {
	var addrs []string
	for _, b := range bs {
		addrs = append(addrs, b.addr)
	}
	return "static:///" + strings.Join(addrs, ",") + "?spiffe_id=" + spiffeID
}

type result struct {
	at      time.Time
	backend string
	err     error
}

// load sends n GET requests from workers goroutines and returns every
// outcome.
func load(t *testing.T, c *http.Client, url string, n, workers int) []result {
	t.Helper()
	results := make([]result, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				results[i] = getOnce(t, c, url)
			}
		})
	}
	wg.Wait()
	return results
}

func getOnce(t *testing.T, c *http.Client, url string) result {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := c.Do(req)
	if err != nil {
		return result{at: time.Now(), err: err}
	}
	defer resp.Body.Close()
	var e echoed
	if resp.StatusCode != http.StatusOK {
		return result{at: time.Now(), err: fmt.Errorf("status %d", resp.StatusCode)}
	}
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		return result{at: time.Now(), err: err}
	}
	return result{at: time.Now(), backend: e.Backend}
}

func shares(rs []result) (map[string]float64, int) {
	counts := map[string]int{}
	failed := 0
	for _, r := range rs {
		if r.err != nil {
			failed++
			continue
		}
		counts[r.backend]++
	}
	out := map[string]float64{}
	for b, c := range counts {
		out[b] = 100 * float64(c) / float64(len(rs)-failed)
	}
	return out, failed
}

func TestHTTPClientBalancesAcrossThreeBackends(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	// Round robin must split evenly. Least request follows load: on this
	// shared machine one backend is often slower for a while and rightly
	// gets less, so it is held to a looser bound.
	for _, tc := range []struct {
		policy    discovery.Policy
		tolerance float64 // percentage points
	}{{discovery.RoundRobin, 5}, {discovery.LeastRequest, 15}} {
		policy, tolerance := tc.policy, tc.tolerance
		t.Run(string(policy), func(t *testing.T) {
			bs := startBackends(t, 3, mesh.WithIdentity(devSource(t, ca, "/trading")))
			c := httpClient(t, mesh.WithIdentity(devSource(t, ca, "/gateway")),
				mesh.WithHTTPTarget("trading.mesh", staticTarget(bs, "spiffe://example.org/trading")),
				// The default resilience policy: a request the killed backend
				// refuses never reached it and is retried on another; the
				// balancer ejects the dead endpoint.
				mesh.WithBalancer(discovery.Balancer{Policy: policy}))
			const n = 1500
			rs := load(t, c, "http://trading.mesh/v1/trades", n, 6)
			got, failed := shares(rs)
			if failed > 0 {
				t.Errorf("%d of %d requests failed", failed, n)
				for _, r := range rs {
					if r.err != nil {
						t.Log(r.err)
					}
				}
			}
			for _, b := range bs {
				if d := math.Abs(got[b.h.name] - 100.0/3); d > tolerance {
					t.Errorf("backend %s got %.1f%% of requests, want 33.3%% ± %v", b.h.name, got[b.h.name], tolerance)
				}
			}
			t.Logf("%s over 3 backends: %.1f%% %.1f%% %.1f%%", policy, got["b0"], got["b1"], got["b2"])

			// Kill one backend; the others take over without a failed request.
			bs[1].stop()
			killed := time.Now()
			rs = load(t, c, "http://trading.mesh/v1/trades", 600, 6)
			var lastOnDead, lastFailure time.Duration
			for _, r := range rs {
				if r.err != nil {
					lastFailure = max(lastFailure, r.at.Sub(killed))
				}
				if r.backend == "b1" {
					lastOnDead = max(lastOnDead, r.at.Sub(killed))
				}
			}
			got, failed = shares(rs)
			if failed > 0 || lastOnDead > 0 {
				t.Errorf("after the kill: %d failed requests (last %v after), last answer from the killed backend %v after", failed, lastFailure, lastOnDead)
				for _, r := range rs {
					if r.err != nil {
						t.Log(r.err)
					}
				}
			}
			if lastFailure > 2*time.Second {
				t.Errorf("requests still failed %v after the kill, want under 2s", lastFailure)
			}
			for _, b := range []string{"b0", "b2"} {
				if d := math.Abs(got[b] - 50); d > tolerance {
					t.Errorf("after the kill backend %s got %.1f%%, want 50%% ± %v", b, got[b], tolerance)
				}
			}
			t.Logf("after killing b1: %.1f%% %.1f%%, %d failed, took %v for 600 requests", got["b0"], got["b2"], failed, time.Since(killed).Round(time.Millisecond))
		})
	}
}

func TestHTTPClientVerifiesEachEndpointID(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	good := startBackends(t, 1, mesh.WithIdentity(devSource(t, ca, "/trading")))
	impostor := startBackends(t, 1, mesh.WithIdentity(devSource(t, ca, "/impostor")))
	all := append(good, impostor...)

	t.Run("impostor among endpoints gets nothing", func(t *testing.T) {
		c := httpClient(t, mesh.WithIdentity(devSource(t, ca, "/gateway")),
			mesh.WithHTTPTarget("trading.mesh", staticTarget(all, "spiffe://example.org/trading")))
		_, failed := shares(load(t, c, "http://trading.mesh/", 50, 2))
		if failed != 0 || impostor[0].h.calls.Load() != 0 {
			t.Errorf("%d failed, impostor handler ran %d times; want 0 and 0", failed, impostor[0].h.calls.Load())
		}
	})
	t.Run("only an impostor", func(t *testing.T) {
		c := httpClient(t, mesh.WithIdentity(devSource(t, ca, "/gateway")),
			mesh.WithHTTPTarget("trading.mesh", staticTarget(impostor, "spiffe://example.org/trading")))
		r := getOnce(t, c, "http://trading.mesh/")
		if r.err == nil || !strings.Contains(r.err.Error(), "spiffe://example.org/impostor") {
			t.Errorf("err = %v, want a refusal naming the impostor's ID", r.err)
		}
	})
	t.Run("WithServerID without discovery IDs", func(t *testing.T) {
		c := httpClient(t, mesh.WithIdentity(devSource(t, ca, "/gateway")), mesh.WithServerID(id("/trading")))
		if r := getOnce(t, c, "http://"+impostor[0].addr+"/"); r.err == nil {
			t.Error("request to an impostor succeeded")
		}
		if r := getOnce(t, c, "http://"+good[0].addr+"/"); r.err != nil {
			t.Errorf("request to the right server: %v", r.err)
		}
	})
	t.Run("default refuses another trust domain", func(t *testing.T) {
		mine, other := pki.NewCA(t, "example.org"), pki.NewCA(t, "other.org")
		srvAddr, _ := startHTTPServer(t, &httpEcho{}, mesh.WithIdentity(other.NewSource(t, "spiffe://other.org/trading", mine.Bundle())))
		clientSrc := mine.NewSource(t, "spiffe://example.org/gateway", other.Bundle())
		c := httpClient(t, mesh.WithIdentity(clientSrc))
		if r := getOnce(t, c, "http://"+srvAddr+"/"); r.err == nil {
			t.Error("server of another trust domain accepted by default")
		}
		c = httpClient(t, mesh.WithIdentity(clientSrc), mesh.WithServerTrustDomain(other.TrustDomain))
		if r := getOnce(t, c, "http://"+srvAddr+"/"); r.err != nil {
			t.Errorf("with WithServerTrustDomain: %v", r.err)
		}
	})
}

func TestHTTPClientAppliesResilienceAndCarriesTraceContext(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	var calls atomic.Int64
	var traceparent atomic.Value
	addr, _ := startHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		traceparent.Store(r.Header.Get("traceparent"))
		if calls.Add(1)%2 == 1 { // every other call fails
			http.Error(w, "warming up", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok")
	}), mesh.WithIdentity(devSource(t, ca, "/trading")))
	rc, err := resilience.NewClient(resilience.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider() // telemetry on: the context goes on
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	c := httpClient(t, mesh.WithIdentity(devSource(t, ca, "/gateway")),
		mesh.WithHTTPTarget("trading.mesh", "static:///"+addr),
		mesh.WithResilience(rc), mesh.WithTracerProvider(tp))

	traceID := trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36}
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: traceID, SpanID: trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8}, TraceFlags: trace.FlagsSampled, Remote: true})
	ctx := trace.ContextWithRemoteSpanContext(callTimeout(t), sc)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://trading.mesh/v1/lots", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || calls.Load() != 2 {
		t.Errorf("status %d %q after %d calls; want 200 after a retried 503 (2 calls)", resp.StatusCode, body, calls.Load())
	}
	if tp, _ := traceparent.Load().(string); !strings.Contains(tp, traceID.String()) {
		t.Errorf("server saw traceparent %q, want trace %s", tp, traceID)
	}

	// WithoutResilience: the caller gets the 503 itself.
	c = httpClient(t, mesh.WithIdentity(devSource(t, ca, "/gateway")),
		mesh.WithHTTPTarget("trading.mesh", "static:///"+addr), mesh.WithoutResilience())
	if r := getOnce(t, c, "http://trading.mesh/v1/lots"); r.err == nil || calls.Load() != 3 {
		t.Errorf("without resilience: err %v after %d calls, want the 503 after 3", r.err, calls.Load())
	}
}

func TestHTTPConnectionCutAtCertificateExpiry(t *testing.T) {
	ca := pki.NewCA(t, "example.org")
	const grace = 300 * time.Millisecond
	addr, _ := startHTTPServer(t, &httpEcho{}, mesh.WithIdentity(ca.NewSource(t, "spiffe://example.org/server")), mesh.WithConnectionGrace(grace))
	cert := ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/client"}, NotAfter: time.Now().Add(2 * time.Second)})
	conn, err := (&tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}}}).DialContext(callTimeout(t), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	_, err = br.ReadByte() // blocks until the server cuts the connection
	cut := time.Since(cert.Leaf.NotAfter)
	if err == nil || cut < grace-100*time.Millisecond || cut > grace+time.Second {
		t.Errorf("connection ended %v after the certificate expired (err %v), want about the %v grace", cut, err, grace)
	}
	t.Logf("connection cut %v after certificate expiry (grace %v)", cut.Round(time.Millisecond), grace)
}

func TestHTTPConnectionAgeCapped(t *testing.T) {
	ca := newDevCA(t, 3*time.Second) // max connection age 1.2s
	addr, _ := startHTTPServer(t, &httpEcho{}, mesh.WithIdentity(devSource(t, ca, "/server")))
	c := httpClient(t, mesh.WithIdentity(devSource(t, ca, "/client")))
	var conns sync.Map
	deadline := time.Now().Add(10 * time.Second)
	for n := 0; ; n++ {
		ctx := httptrace.WithClientTrace(callTimeout(t), &httptrace.ClientTrace{
			GotConn: func(info httptrace.GotConnInfo) { conns.Store(info.Conn.LocalAddr().String(), true) },
		})
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("request %d: %v", n, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		count := 0
		conns.Range(func(any, any) bool { count++; return true })
		if count >= 2 {
			return // the first connection was retired and a new one opened, without a failure
		}
		if time.Now().After(deadline) {
			t.Fatal("the client kept one connection for 10s; want it retired after 1.2s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestHTTPServeDrainsInFlightRequests(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	h := &httpEcho{block: make(chan struct{})}
	srv, err := mesh.NewHTTPServer(h, mesh.WithIdentity(devSource(t, ca, "/server")))
	if err != nil {
		t.Fatal(err)
	}
	lis := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()
	c := httpClient(t, mesh.WithIdentity(devSource(t, ca, "/client")))
	result := make(chan result, 1)
	go func() { result <- getOnce(t, c, "http://"+lis.Addr().String()+"/") }()
	waitFor(t, func() bool { return h.calls.Load() == 1 })
	cancel()
	select {
	case err := <-served:
		t.Fatalf("Serve returned before the in-flight request finished: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(h.block)
	if r := <-result; r.err != nil {
		t.Errorf("in-flight request failed during drain: %v", r.err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
	srv.Close()
	srv.Close()
}

func TestHTTPClientErrorsExplainFix(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	src := devSource(t, ca, "/client")
	tests := []struct {
		name string
		opts []mesh.DialOption
		want string
	}{
		{"no identity", nil, "mesh.WithIdentity"},
		{"unsupported policy", []mesh.DialOption{mesh.WithIdentity(src), mesh.WithBalancer(discovery.Balancer{Policy: discovery.WeightedRoundRobin})}, "least_request"},
		{"bad target", []mesh.DialOption{mesh.WithIdentity(src), mesh.WithHTTPTarget("x", "nope:///y")}, `WithHTTPTarget("x", "nope:///y")`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := mesh.HTTPClient(tc.opts...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
	c := httpClient(t, mesh.WithIdentity(src))
	if r := getOnce(t, c, "http://noport/"); r.err == nil || !strings.Contains(r.err.Error(), "WithHTTPTarget") {
		t.Errorf("host without port: err = %v, want advice naming WithHTTPTarget", r.err)
	}
	if r := getOnce(t, c, "http://trading.mesh/"); r.err == nil || !strings.Contains(r.err.Error(), "Consul") {
		t.Errorf(".mesh host without Consul: err = %v, want one naming Consul", r.err)
	}
	if _, err := mesh.NewHTTPServer(nil, mesh.WithIdentity(src)); err == nil {
		t.Error("NewHTTPServer(nil) succeeded")
	}
}

// TestHTTPClientRetriesOnlyWhatIsSafe: resilience is the one stage that
// resends, and Idempotency-Key (what WithIdempotency's servers
// deduplicate) is the one idempotency header. Two backends share one
// idempotency store; each case's first request is applied by the server,
// then its answer is lost: the stream is cut ("abort") or the response
// comes after the client gave up on the attempt ("hang", past the per-try
// timeout). A POST with only X-Idempotency-Key was resent by the balancer
// and applied twice before the fix.
func TestHTTPClientRetriesOnlyWhatIsSafe(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	var mu sync.Mutex
	applied := map[string]int{}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := r.Header.Get("X-Case")
		mu.Lock()
		applied[c]++
		first := applied[c] == 1
		mu.Unlock()
		if first {
			switch r.Header.Get("X-Fault") {
			case "abort": // applied, then the stream is reset
				panic(http.ErrAbortHandler)
			case "hang": // applied, answered after the attempt timed out
				<-r.Context().Done()
			}
		}
		io.WriteString(w, "applied")
	})
	store := idempotency.NewMemoryStore(time.Hour)
	var addrs []string
	for range 2 {
		addr, _ := startHTTPServer(t, h, mesh.WithIdentity(devSource(t, ca, "/trading")), mesh.WithIdempotency(store))
		addrs = append(addrs, addr)
	}
	policy := resilience.Default()
	policy.Retry = resilience.Retry{MaxAttempts: 5, InitialBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, PerTryTimeout: 500 * time.Millisecond}
	c := httpClient(t, mesh.WithIdentity(devSource(t, ca, "/gateway")),
		mesh.WithHTTPTarget("trading.mesh", "static:///"+strings.Join(addrs, ",")+"?spiffe_id=spiffe://example.org/trading"),
		mesh.WithResiliencePolicy(resilience.Config{Default: policy}))

	tests := []struct {
		name        string
		header      string // the idempotency header sent, with a key
		fault       string
		wantOK      bool // the caller gets the server's answer
		wantApplied int
	}{
		{"X-Idempotency-Key is not a key: not resent after a reset", "X-Idempotency-Key", "abort", false, 1},
		{"X-Idempotency-Key is not a key: not retried after the per-try timeout", "X-Idempotency-Key", "hang", false, 1},
		{"no key: not resent after a reset", "", "abort", false, 1},
		{"Idempotency-Key: retried, applied once, answered from the store", "Idempotency-Key", "hang", true, 1},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(callTimeout(t), http.MethodPost, "http://trading.mesh/v1/orders", strings.NewReader(`{"lot":42}`))
			if err != nil {
				t.Fatal(err)
			}
			caseID := fmt.Sprint("case-", i)
			req.Header.Set("X-Case", caseID)
			req.Header.Set("X-Fault", tc.fault)
			if tc.header != "" {
				req.Header.Set(tc.header, "key-"+caseID)
			}
			resp, err := c.Do(req)
			ok := err == nil && resp.StatusCode == http.StatusOK
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if ok && (string(body) != "applied" || resp.Header.Get(idempotency.ReplayedHeader) != "true") {
					t.Errorf("answer %q (replayed %q); want the stored answer of the first copy", body, resp.Header.Get(idempotency.ReplayedHeader))
				}
			}
			mu.Lock()
			got := applied[caseID]
			mu.Unlock()
			if ok != tc.wantOK || got != tc.wantApplied {
				t.Errorf("answered %v (err %v), applied %d times; want answered %v, applied %d", ok, err, got, tc.wantOK, tc.wantApplied)
			}
		})
	}
}

// TestHTTPClientFailsOverNeverSentPOST: a POST without a key whose first
// endpoint refuses the connection is sent to the other endpoint by
// resilience (the failure proves the server never saw it) and applied
// once. Without resilience nothing resends: the caller gets the failure,
// marked resilience.NotSentError, and the next request goes elsewhere.
func TestHTTPClientFailsOverNeverSentPOST(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	live := startBackends(t, 1, mesh.WithIdentity(devSource(t, ca, "/trading")))
	lis := listen(t)
	dead := lis.Addr().String()
	lis.Close() // connections to dead are refused
	target := "static:///" + dead + "," + live[0].addr + "?spiffe_id=spiffe://example.org/trading"
	send := func(c *http.Client) error {
		req, err := http.NewRequestWithContext(callTimeout(t), http.MethodPost, "http://trading.mesh/v1/orders", strings.NewReader(`{"lot":42}`))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}

	t.Run("with resilience", func(t *testing.T) {
		var retries atomic.Int64
		rc, err := resilience.NewClient(resilience.DefaultConfig(), resilience.WithObserver(resilience.Observer{
			OnRetry: func(resilience.RetryEvent) { retries.Add(1) }}))
		if err != nil {
			t.Fatal(err)
		}
		// Round robin over two endpoints: one of any two requests goes
		// to the dead one first.
		c := httpClient(t, mesh.WithIdentity(devSource(t, ca, "/gateway")), mesh.WithHTTPTarget("trading.mesh", target),
			mesh.WithBalancer(discovery.Balancer{Policy: discovery.RoundRobin}), mesh.WithResilience(rc))
		before := live[0].h.calls.Load()
		for i := range 4 {
			if err := send(c); err != nil {
				t.Fatalf("POST %d: %v", i, err)
			}
		}
		if got := live[0].h.calls.Load() - before; got != 4 || retries.Load() < 1 {
			t.Errorf("live endpoint applied %d of 4 POSTs after %d retries; want 4, each once, after at least 1 retry", got, retries.Load())
		}
	})
	t.Run("without resilience", func(t *testing.T) {
		c := httpClient(t, mesh.WithIdentity(devSource(t, ca, "/gateway")), mesh.WithHTTPTarget("trading.mesh", target), mesh.WithoutResilience())
		var errs []error
		for range 2 {
			if err := send(c); err != nil {
				errs = append(errs, err)
			}
		}
		var ns resilience.NotSentError
		if len(errs) != 1 || !errors.As(errs[0], &ns) || !ns.NotSent() || !strings.Contains(errs[0].Error(), dead) {
			t.Errorf("errors %v; want one, a NotSentError naming %s", errs, dead)
		}
	})
}

// TestHTTPClientRoutesOnceAfterWrappers: a WithHTTPRoundTripper wrapper
// that rewrites the path gets one route's timeout and the same route's
// cluster: the request is routed once, as the wrapper sends it. Before,
// the timeout came from the path the application gave and the cluster
// from the rewritten one.
func TestHTTPClientRoutesOnceAfterWrappers(t *testing.T) {
	rewrite := func(from, to string) mesh.DialOption {
		return mesh.WithHTTPRoundTripper(func(next http.RoundTripper) http.RoundTripper {
			return roundTripFunc(func(r *http.Request) (*http.Response, error) {
				out := r.Clone(r.Context())
				out.URL.Path = strings.Replace(out.URL.Path, from, to, 1)
				return next.RoundTrip(out)
			})
		})
	}
	routes := []controlplane.Route{
		{Name: "quote", Version: "v1", Timeout: 300 * time.Millisecond, Match: controlplane.Match{Prefix: "/v1/quote"}},
		{Name: "stable", Version: "v2"},
	}
	tests := []struct {
		name     string
		wrapper  mesh.DialOption
		path     string
		wantErr  string // "" : answered by wantFrom
		wantFrom string
	}{
		{"rewritten off the timed route: no timeout, stable's cluster", rewrite("/v1/quote", "/v1/trades"), "/v1/quote?delay=600ms", "", "v2"},
		{"rewritten onto the timed route: its timeout", rewrite("/v1/trades", "/v1/quote"), "/v1/trades?delay=3s", `route "quote" timeout 300ms`, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := startVersions(t, routes, tc.wrapper)
			r := getWith(t, c, "http://trading.mesh"+tc.path, nil)
			if tc.wantErr != "" {
				if r.err == nil || !strings.Contains(r.err.Error(), tc.wantErr) {
					t.Errorf("answered by %q, err %v; want an error containing %q", r.backend, r.err, tc.wantErr)
				}
				return
			}
			if r.err != nil || r.backend != tc.wantFrom {
				t.Errorf("answered by %q, err %v; want %q", r.backend, r.err, tc.wantFrom)
			}
		})
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
