package mesh_test

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/internal/testutil/pki"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestCallCarriesBothIdentities(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	svc := &echoService{}
	addr := startServer(t, svc, mesh.WithIdentity(devSource(t, ca, "/server")))
	client := dial(t, addr, mesh.WithIdentity(devSource(t, ca, "/client")))

	var p peer.Peer
	resp, err := client.UnaryCall(callTimeout(t), &testpb.SimpleRequest{}, grpc.Peer(&p))
	if err != nil {
		t.Fatalf("UnaryCall: %v", err)
	}
	if got, want := resp.GetUsername(), "spiffe://example.org/client"; got != want {
		t.Errorf("server saw caller %q, want %q", got, want)
	}
	info := p.AuthInfo.(credentials.TLSInfo)
	if got, want := info.SPIFFEID.String(), "spiffe://example.org/server"; got != want {
		t.Errorf("client saw server %q, want %q", got, want)
	}
	if info.State.Version != tls.VersionTLS13 {
		t.Errorf("TLS version %x, want TLS 1.3", info.State.Version)
	}
}

func TestHealthServiceReportsServing(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	addr := startServer(t, &echoService{}, mesh.WithIdentity(devSource(t, ca, "/server")),
		mesh.WithAuthorizer(mustRules(t))) // deny everything but health
	cc, err := mesh.Dial(callTimeout(t), addr, mesh.WithIdentity(devSource(t, ca, "/client")))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	resp, err := healthpb.NewHealthClient(cc).Check(callTimeout(t), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("health Check: %v", err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health = %v, want SERVING", resp.GetStatus())
	}
}

// TestBadClientCertificatesRefusedBeforeHandler is the bad-input table: every
// case must fail and no handler may run.
func TestBadClientCertificatesRefusedBeforeHandler(t *testing.T) {
	ca := pki.NewCA(t, "example.org")
	otherDomain := pki.NewCA(t, "evil.org")
	rogue := pki.NewCA(t, "example.org") // same name, different key: not in the bundle
	svc := &echoService{}
	addr := startServer(t, svc,
		mesh.WithIdentity(ca.NewSource(t, "spiffe://example.org/server")),
		mesh.WithAuthorizer(mustRules(t,
			security.Allow("clients", security.PathPrefix(id("/clients"))),
		)))

	now := time.Now()
	withCert := func(c tls.Certificate) credentials.TransportCredentials {
		return credentials.NewTLS(&tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{c}})
	}
	tests := []struct {
		name     string
		creds    credentials.TransportCredentials
		wantCode codes.Code
		wantMsg  string
	}{
		{"no client certificate", credentials.NewTLS(&tls.Config{InsecureSkipVerify: true}), codes.Unavailable, ""},
		{"wrong trust domain", withCert(otherDomain.Issue(t, pki.Leaf{URIs: []string{"spiffe://evil.org/clients/a"}})), codes.Unavailable, ""},
		{"expired", withCert(ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/clients/a"}, NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Minute)})), codes.Unavailable, ""},
		{"not yet valid", withCert(ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/clients/a"}, NotBefore: now.Add(time.Hour), NotAfter: now.Add(2 * time.Hour)})), codes.Unavailable, ""},
		{"self-signed", withCert(ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/clients/a"}, SelfSigned: true})), codes.Unavailable, ""},
		{"signed by a CA not in the bundle", withCert(rogue.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/clients/a"}})), codes.Unavailable, ""},
		{"two URI SANs", withCert(ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/clients/a", "spiffe://example.org/clients/b"}})), codes.Unavailable, ""},
		{"no URI SAN", withCert(ca.Issue(t, pki.Leaf{})), codes.Unavailable, ""},
		{"CA certificate as leaf", withCert(ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/clients/a"}, IsCA: true})), codes.Unavailable, ""},
		{"malformed SPIFFE ID", withCert(ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/clients//a"}})), codes.Unavailable, ""},
		{"URI SAN that is not SPIFFE", withCert(ca.Issue(t, pki.Leaf{URIs: []string{"https://example.org/clients/a"}})), codes.Unavailable, ""},
		{"TLS 1.2 client", credentials.NewTLS(&tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12, Certificates: []tls.Certificate{ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/clients/a"}})}}), codes.Unavailable, ""},
		{"plaintext client", insecure.NewCredentials(), codes.Unavailable, ""},
		{"valid SVID that no rule allows", withCert(ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/intruder"}})), codes.PermissionDenied,
			"spiffe://example.org/intruder may not call /grpc.testing.TestService/UnaryCall"},
	}
	for _, c := range badSANCerts("spiffe://example.org/clients/a") { // mesh/badsan_test.go
		tc := tests[0] // the same expectation: a failed handshake
		tc.name, tc.creds = "SAN: "+c.name, withCert(ca.IssueSANs(t, c.sans...))
		tests = append(tests, tc)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(tc.creds))
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err = testgrpc.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{})
			if got := status.Code(err); got != tc.wantCode {
				t.Fatalf("code = %v (%v), want %v", got, err, tc.wantCode)
			}
			if tc.wantMsg != "" && !strings.Contains(status.Convert(err).Message(), tc.wantMsg) {
				t.Errorf("message %q does not contain %q", status.Convert(err).Message(), tc.wantMsg)
			}
		})
	}
	if n := svc.calls.Load(); n != 0 {
		t.Errorf("handler ran %d times, want 0", n)
	}

	// The same server still serves a good client.
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(withCert(ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/clients/a"}}))))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := testgrpc.NewTestServiceClient(cc).UnaryCall(callTimeout(t), &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("good client refused: %v", err)
	}
}

func TestClientRefusesUnexpectedServer(t *testing.T) {
	ca := pki.NewCA(t, "example.org")
	other := pki.NewCA(t, "other.org")
	svc := &echoService{}
	addr := startServer(t, svc, mesh.WithIdentity(ca.NewSource(t, "spiffe://example.org/server")))
	otherAddr := startServer(t, svc, mesh.WithIdentity(other.NewSource(t, "spiffe://other.org/server", ca.Bundle())))
	clientSrc := ca.NewSource(t, "spiffe://example.org/client", other.Bundle())

	tests := []struct {
		name string
		addr string
		opts []mesh.DialOption
		ok   bool
	}{
		{"expected ID matches", addr, []mesh.DialOption{mesh.WithServerID(id("/server"))}, true},
		{"expected ID differs", addr, []mesh.DialOption{mesh.WithServerID(id("/payments"))}, false},
		{"default: own trust domain", addr, nil, true},
		{"default refuses another trusted domain", otherAddr, nil, false},
		{"other trust domain when asked for", otherAddr, []mesh.DialOption{mesh.WithServerTrustDomain(other.TrustDomain)}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			client := dial(t, tc.addr, append(tc.opts, mesh.WithIdentity(clientSrc))...)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			before := svc.calls.Load()
			_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
			if tc.ok != (err == nil) {
				t.Fatalf("UnaryCall err = %v, want ok=%v", err, tc.ok)
			}
			if !tc.ok && svc.calls.Load() != before {
				t.Errorf("handler ran for a refused server")
			}
		})
	}
}

func TestAuthorizationRules(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	svc := &echoService{}
	addr := startServer(t, svc, mesh.WithIdentity(devSource(t, ca, "/server")),
		mesh.WithAuthorizer(mustRules(t,
			security.Allow("trading-unary", spiffeid.MatchID(id("/trading")), "/grpc.testing.TestService/UnaryCall"),
			security.Allow("ops-all", security.PathPrefix(id("/ops"))),
			security.Refuse("no-ops-interns", spiffeid.MatchID(id("/ops/intern")), "*"),
		)))
	tests := []struct {
		caller string
		stream bool
		want   codes.Code
	}{
		{"/trading", false, codes.OK},
		{"/trading", true, codes.PermissionDenied},
		{"/ops/alice", true, codes.OK},
		{"/ops", false, codes.OK},
		{"/operations", false, codes.PermissionDenied},
		{"/ops/intern", false, codes.PermissionDenied},
		{"/gateway", false, codes.PermissionDenied},
	}
	for _, tc := range tests {
		name := tc.caller + map[bool]string{false: " unary", true: " stream"}[tc.stream]
		t.Run(name, func(t *testing.T) {
			client := dial(t, addr, mesh.WithIdentity(devSource(t, ca, tc.caller)))
			before := svc.calls.Load()
			var err error
			if tc.stream {
				var stream testgrpc.TestService_FullDuplexCallClient
				stream, err = client.FullDuplexCall(callTimeout(t))
				if err == nil {
					stream.Send(&testpb.StreamingOutputCallRequest{}) // io.EOF when refused; Recv tells why
					_, err = stream.Recv()
				}
			} else {
				_, err = client.UnaryCall(callTimeout(t), &testpb.SimpleRequest{})
			}
			if got := status.Code(err); got != tc.want {
				t.Fatalf("code = %v (%v), want %v", got, err, tc.want)
			}
			if tc.want == codes.PermissionDenied && svc.calls.Load() != before {
				t.Error("handler ran for a denied call")
			}
		})
	}
}

func TestServeDrainsInFlightCalls(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	svc := &echoService{block: make(chan struct{})}
	srv, err := mesh.NewServer(mesh.WithIdentity(devSource(t, ca, "/server")))
	if err != nil {
		t.Fatal(err)
	}
	testgrpc.RegisterTestServiceServer(srv, svc)
	lis := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()
	client := dial(t, lis.Addr().String(), mesh.WithIdentity(devSource(t, ca, "/client")))

	result := make(chan error, 1)
	go func() {
		_, err := client.UnaryCall(callTimeout(t), &testpb.SimpleRequest{})
		result <- err
	}()
	waitFor(t, func() bool { return svc.calls.Load() == 1 })
	cancel() // start draining with the call in flight
	select {
	case err := <-served:
		t.Fatalf("Serve returned before the in-flight call finished: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(svc.block)
	if err := <-result; err != nil {
		t.Errorf("in-flight call failed during drain: %v", err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve = %v, want nil after drain", err)
	}
	if err := srv.Close(); err != nil {
		t.Errorf("Close after Serve: %v", err)
	}
}

func TestNewServerWithoutIdentityExplainsFix(t *testing.T) {
	_, err := mesh.NewServer()
	if err == nil || !strings.Contains(err.Error(), "mesh.WithIdentity") {
		t.Fatalf("NewServer() error = %v, want one naming mesh.WithIdentity", err)
	}
	_, err = mesh.Dial(context.Background(), "127.0.0.1:1")
	if err == nil || !strings.Contains(err.Error(), "mesh.WithIdentity") {
		t.Fatalf("Dial() error = %v, want one naming mesh.WithIdentity", err)
	}
}
