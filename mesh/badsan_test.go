package mesh_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/internal/testutil/pki"
	"github.com/gridmesh/gridmesh/mesh"
)

// badSANCert is a certificate, signed by the trusted CA, whose subject
// alternative names another reader could take for a different name: a NUL
// that C string handling truncates ("victim\0evil" once matched a rule for
// "victim" in Envoy), control characters, bytes outside ASCII, escapes, or
// a second URI. Each must fail the handshake before any handler runs.
type badSANCert struct {
	name string
	sans []pki.SAN
}

// badSANCerts are the SAN cases of the bad-certificate tables
// (TestBadClientCertificatesRefusedBeforeHandler,
// TestHTTPBadClientCertificatesRefusedBeforeHandler) and of
// TestClientRefusesServerWithBadSAN, each a bent form of good, the SPIFFE
// ID the peer would be allowed as. crypto/x509 refuses to parse the first
// six; go-spiffe accepts "upper-case scheme" and the DNS and email cases,
// which only the mesh's own checks (meshtls.VerifyPeer) refuse.
func badSANCerts(good string) []badSANCert {
	slash := strings.LastIndexByte(good, '/')
	return []badSANCert{
		{"NUL in the SPIFFE ID path", []pki.SAN{pki.URI(good + "\x00evil")}},
		{"NUL in the trust domain", []pki.SAN{pki.URI(strings.Replace(good, "example.org", "example.org\x00.evil.org", 1))}},
		{"control character in the SPIFFE ID", []pki.SAN{pki.URI(good + "\x01")}},
		{"non-UTF-8 byte in the SPIFFE ID", []pki.SAN{pki.URI(good + "\xff")}},
		{"overlong UTF-8 dots in the SPIFFE ID", []pki.SAN{pki.URI(good + "/\xc0\xae\xc0\xae")}},
		{"non-ASCII DNS SAN", []pki.SAN{pki.URI(good), pki.DNS("caf\xc3\xa9.example.org")}},
		{"percent-encoded NUL", []pki.SAN{pki.URI(good + "%00evil")}},
		{"percent-encoded slash", []pki.SAN{pki.URI(good[:slash] + "%2F" + good[slash+1:])}},
		{"upper-case scheme", []pki.SAN{pki.URI("SPIFFE" + strings.TrimPrefix(good, "spiffe"))}},
		{"SPIFFE ID and a second, non-SPIFFE URI", []pki.SAN{pki.URI(good), pki.URI("https://evil.org/")}},
		{"DNS SAN with a NUL", []pki.SAN{pki.URI(good), pki.DNS("victim\x00.evil.org")}},
		{"DNS SAN with an escape character", []pki.SAN{pki.URI(good), pki.DNS("victim\x1b[0m.evil.org")}},
		{"email SAN with a NUL", []pki.SAN{pki.URI(good), pki.Email("victim@example.org\x00evil")}},
	}
}

// TestClientRefusesServerWithBadSAN is the other side of the tables: a
// server presenting each bad certificate (claiming the expected
// spiffe://example.org/server) is refused by the mesh's gRPC and HTTP
// clients at the handshake, so no request reaches it.
func TestClientRefusesServerWithBadSAN(t *testing.T) {
	ca := pki.NewCA(t, "example.org")
	clientSrc := ca.NewSource(t, "spiffe://example.org/clients/a")
	for _, c := range badSANCerts("spiffe://example.org/server") {
		sans := c.sans
		t.Run("gRPC: "+c.name, func(t *testing.T) {
			svc := &echoService{}
			addr := startServer(t, svc, mesh.WithIdentity(ca.SourceSANs(t, "spiffe://example.org/server", sans)))
			client := dial(t, addr, mesh.WithIdentity(clientSrc), mesh.WithServerID(id("/server")))
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}); status.Code(err) != codes.Unavailable {
				t.Errorf("UnaryCall = %v, want UNAVAILABLE (failed handshake)", err)
			}
			if n := svc.calls.Load(); n != 0 {
				t.Errorf("handler ran %d times, want 0", n)
			}
		})
		t.Run("HTTP: "+c.name, func(t *testing.T) {
			h := &httpEcho{}
			addr, _ := startHTTPServer(t, h, mesh.WithIdentity(ca.SourceSANs(t, "spiffe://example.org/server", sans)))
			c := httpClient(t, mesh.WithIdentity(clientSrc), mesh.WithServerID(id("/server")))
			req, _ := http.NewRequestWithContext(callTimeout(t), http.MethodGet, "http://"+addr+"/", nil)
			if resp, err := c.Do(req); err == nil {
				resp.Body.Close()
				t.Errorf("request succeeded with status %d, want a failed handshake", resp.StatusCode)
			}
			if n := h.calls.Load(); n != 0 {
				t.Errorf("handler ran %d times, want 0", n)
			}
		})
	}
	// The same clients reach a server with a good certificate.
	svc := &echoService{}
	addr := startServer(t, svc, mesh.WithIdentity(ca.SourceSANs(t, "spiffe://example.org/server", []pki.SAN{pki.URI("spiffe://example.org/server"), pki.DNS("server.example.org")})))
	if _, err := dial(t, addr, mesh.WithIdentity(clientSrc), mesh.WithServerID(id("/server"))).UnaryCall(callTimeout(t), &testpb.SimpleRequest{}); err != nil {
		t.Errorf("good server refused: %v", err)
	}
}
