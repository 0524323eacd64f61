package telemetry_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/gridmesh/gridmesh/telemetry"
)

func tlsWithID(id string) *tls.ConnectionState {
	u, _ := url.Parse(id)
	return &tls.ConnectionState{PeerCertificates: []*x509.Certificate{{URIs: []*url.URL{u}}}}
}

func TestHTTPHandlerAndTransportRecordIdentities(t *testing.T) {
	m := telemetry.NewMetrics(nil)
	var got []telemetry.Event
	m.OnEvent(func(e telemetry.Event) { got = append(got, e) })

	mux := http.NewServeMux()
	mux.HandleFunc("GET /certs/{id}", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("POST /orders", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusConflict) })
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {})
	h := telemetry.HTTPHandler(m, "spiffe://example.org/registry", mux)
	for _, req := range []*http.Request{
		httptest.NewRequest("GET", "/certs/42", nil),
		httptest.NewRequest("POST", "/orders", nil),
		httptest.NewRequest("HEAD", "/health", nil),
	} {
		req.TLS = tlsWithID("spiffe://example.org/trading")
		h.ServeHTTP(httptest.NewRecorder(), req)
	}

	rt := telemetry.HTTPTransport(m, "spiffe://example.org/trading", "", roundTrip(func(r *http.Request) (*http.Response, error) {
		if r.URL.Path == "/down" {
			return nil, errors.New("connection refused")
		}
		return &http.Response{StatusCode: 200, Request: r, TLS: tlsWithID("spiffe://example.org/registry"), Body: http.NoBody}, nil
	}))
	for _, path := range []string{"/certs/7", "/down"} {
		req := httptest.NewRequest("GET", "https://registry.mesh:8443"+path, nil)
		if resp, err := rt.RoundTrip(req); err == nil {
			resp.Body.Close()
		}
	}

	want := []telemetry.Event{
		{Kind: "call", Side: "server", Source: "spiffe://example.org/trading", Peer: "spiffe://example.org/registry", Method: "GET /certs/{id}", Code: "200"},
		{Kind: "call", Side: "server", Source: "spiffe://example.org/trading", Peer: "spiffe://example.org/registry", Method: "POST /orders", Code: "409"},
		{Kind: "call", Side: "server", Source: "spiffe://example.org/trading", Peer: "spiffe://example.org/registry", Method: "HEAD /health", Code: "200"},
		{Kind: "call", Side: "client", Source: "spiffe://example.org/trading", Peer: "spiffe://example.org/registry", Target: "registry.mesh:8443",
			Endpoint: "registry.mesh:8443", Method: "GET", Code: "200"},
		{Kind: "call", Side: "client", Source: "spiffe://example.org/trading", Target: "registry.mesh:8443", Method: "GET", Code: "error", Detail: "connection refused"},
	}
	if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(telemetry.Event{}, "Time", "Duration")); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

type roundTrip func(*http.Request) (*http.Response, error)

func (f roundTrip) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
