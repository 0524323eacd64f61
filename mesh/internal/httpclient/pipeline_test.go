package httpclient_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/internal/httpbalance"
	"github.com/gridmesh/gridmesh/internal/testutil/pki"
	"github.com/gridmesh/gridmesh/mesh/internal/httpclient"
	"github.com/gridmesh/gridmesh/resilience"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type rtFunc func(*http.Request) (*http.Response, error)

func (f rtFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// stageLog records the stages a request passes, in order.
type stageLog struct {
	mu     sync.Mutex
	stages []string
}

func (l *stageLog) stage(name string) func(http.RoundTripper) http.RoundTripper {
	return func(next http.RoundTripper) http.RoundTripper {
		return rtFunc(func(r *http.Request) (*http.Response, error) {
			l.mu.Lock()
			l.stages = append(l.stages, name+" "+r.URL.Host)
			l.mu.Unlock()
			return next.RoundTrip(r)
		})
	}
}

// startTLS starts an HTTP/1.1 server with the SVID id of ca that counts
// the requests its handler runs.
func startTLS(t *testing.T, ca *pki.CA, id string) (addr string, applied *atomic.Int64) {
	applied = new(atomic.Int64)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		applied.Add(1)
		io.WriteString(w, "ok")
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, pki.Leaf{URIs: []string{id}})}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), applied
}

// deadAddrBefore is a loopback address nothing listens on that discovery
// lists before live (it sorts endpoints by address).
func deadAddrBefore(t *testing.T, live string) string {
	for range 100 {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := lis.Addr().String()
		lis.Close()
		if addr < live {
			return addr
		}
	}
	t.Fatalf("no free port that sorts before %s in 100 tries", live)
	return ""
}

func newTransport(t *testing.T, ca *pki.CA, target string, cfg httpclient.Config) *httpclient.Transport {
	t.Helper()
	reg, err := discovery.New(discovery.Config{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Identity = ca.NewSource(t, "spiffe://example.org/client")
	cfg.Expect = spiffeid.MatchID(spiffeid.RequireFromString("spiffe://example.org/server"))
	cfg.Registry = reg
	cfg.Targets = map[string]string{"trading": target}
	cfg.Protocols.SetHTTP1(true)
	cfg.NextProtos = []string{"http/1.1"}
	// Pick first, so the dead endpoint listed first is always tried first.
	cfg.Balance = httpbalance.Config{Policy: httpbalance.PickFirst}
	tr, err := httpclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

func post(t *testing.T, rt http.RoundTripper) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://trading/v1/trades", strings.NewReader(`{"lot":1}`))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := rt.RoundTrip(req)
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return resp, err
}

// TestPipelineStagesInOrder: a POST whose first endpoint refuses the
// connection passes wrapper, call telemetry and resilience once, and two
// attempts (each seen with the service's host, not an endpoint's); the
// retry goes to the other endpoint and the server applies the POST once.
func TestPipelineStagesInOrder(t *testing.T) {
	ca := pki.NewCA(t, "example.org")
	live, applied := startTLS(t, ca, "spiffe://example.org/server")
	rc, err := resilience.NewClient(resilience.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	var log stageLog
	tr := newTransport(t, ca, "static:///"+deadAddrBefore(t, live)+","+live, httpclient.Config{
		Wrappers: []func(http.RoundTripper) http.RoundTripper{log.stage("wrapper")},
		Calls:    log.stage("calls"),
		Resilience: func(next http.RoundTripper) http.RoundTripper {
			return log.stage("resilience")(rc.RoundTripper(next))
		},
		Attempts: log.stage("attempt"),
	})
	resp, err := post(t, tr)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || applied.Load() != 1 {
		t.Errorf("status %d, applied %d times; want 200, once", resp.StatusCode, applied.Load())
	}
	want := []string{"wrapper trading", "calls trading", "resilience trading", "attempt trading", "attempt trading"}
	if diff := cmp.Diff(want, log.stages); diff != "" {
		t.Errorf("stages (-want +got):\n%s", diff)
	}
}

// TestNeverSentFailureIsMarked: without resilience nothing retries; the
// caller gets the refused connection as a resilience.NotSentError naming
// the endpoint, and the next request goes to the other endpoint.
func TestNeverSentFailureIsMarked(t *testing.T) {
	ca := pki.NewCA(t, "example.org")
	live, applied := startTLS(t, ca, "spiffe://example.org/server")
	dead := deadAddrBefore(t, live)
	tr := newTransport(t, ca, "static:///"+dead+","+live, httpclient.Config{})
	_, err := post(t, tr)
	var ns resilience.NotSentError
	var nse *httpclient.NotSentError
	if !errors.As(err, &ns) || !ns.NotSent() || !errors.As(err, &nse) || nse.Endpoint != dead {
		t.Fatalf("first POST: err %v (%T); want a NotSentError for %s", err, err, dead)
	}
	if _, err := post(t, tr); err != nil || applied.Load() != 1 {
		t.Errorf("second POST: err %v, applied %d; want it on the live endpoint", err, applied.Load())
	}
}

// TestWrongServerIDIsNeverSent: a server presenting another SPIFFE ID is
// refused in the handshake, before the request is written: NotSent.
func TestWrongServerIDIsNeverSent(t *testing.T) {
	ca := pki.NewCA(t, "example.org")
	impostor, applied := startTLS(t, ca, "spiffe://example.org/impostor")
	tr := newTransport(t, ca, "static:///"+impostor, httpclient.Config{})
	_, err := post(t, tr)
	var ns resilience.NotSentError
	if !errors.As(err, &ns) || !strings.Contains(err.Error(), "spiffe://example.org/impostor") || applied.Load() != 0 {
		t.Errorf("err %v, applied %d; want a NotSentError naming the impostor, never applied", err, applied.Load())
	}
}

// TestFirstRequestWaitsInsideResilience: a request to a service whose
// endpoints never come (meshd unreachable), sent without a deadline of its
// own, fails when resilience's timeout ends the wait; it does not hang.
func TestFirstRequestWaitsInsideResilience(t *testing.T) {
	ca := pki.NewCA(t, "example.org")
	policy := resilience.Default()
	policy.Timeout = 300 * time.Millisecond
	rc, err := resilience.NewClient(resilience.Config{Default: policy})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := discovery.New(discovery.Config{})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := httpclient.New(httpclient.Config{
		Identity:          ca.NewSource(t, "spiffe://example.org/client"),
		Expect:            spiffeid.MatchMemberOf(spiffeid.RequireTrustDomainFromString("example.org")),
		Registry:          reg,
		ControlPlane:      deadAddrBefore(t, "9"), // any closed port
		ControlPlaneCreds: insecure.NewCredentials(),
		Resilience:        rc.RoundTripper,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	req, err := http.NewRequest(http.MethodGet, "http://trading.mesh/v1/trades", nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		resp, err := tr.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v; want resilience's deadline", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the request still waits after 10s; resilience's 300ms timeout should end it")
	}
}
