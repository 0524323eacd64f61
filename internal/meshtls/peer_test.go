package meshtls_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"go/ast"
	"go/parser"
	"go/token"
	"go/types"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/internal/meshtls"
	"github.com/gridmesh/gridmesh/internal/testutil/pki"
	"github.com/gridmesh/gridmesh/security"
)

// peerStream is the ServerStream a stream interceptor is handed.
type peerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *peerStream) Context() context.Context { return s.ctx }

// seen runs ctx through Interceptors (unary or stream) with an allow-all
// authorizer and returns what the handler got from PeerID after forge, a
// step a buggy handler or middleware might take, changed its context; and
// the interceptor's error.
func seen(ctx context.Context, stream bool, forge func(context.Context) context.Context) (string, error) {
	unary, streamI := meshtls.Interceptors(meshtls.AllowAll, nil)
	var got string
	record := func(ctx context.Context) {
		if id, ok := security.PeerID(forge(ctx)); ok {
			got = id.String()
		} else {
			got = "(none)"
		}
	}
	var err error
	if stream {
		err = streamI(nil, &peerStream{ctx: ctx}, &grpc.StreamServerInfo{FullMethod: "/rec.Registry/Watch"}, func(_ any, ss grpc.ServerStream) error {
			record(ss.Context())
			return nil
		})
	} else {
		_, err = unary(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/rec.Registry/Trade"}, func(ctx context.Context, _ any) (any, error) {
			record(ctx)
			return nil, nil
		})
	}
	return got, err
}

// TestPeerIDCannotBeForgedByContext is the regression test for
// security.WithPeerID, which let any code put a "verified" caller into a
// context that PeerID then preferred over the TLS peer. The verified peer
// now comes only from the handshake, through the mesh's own checks: the
// interceptors here, which alone write internal/peerctx.
func TestPeerIDCannotBeForgedByContext(t *testing.T) {
	ca := pki.NewCA(t, "example.org")
	caller := ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/clients/a"}})
	victim := ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/payments"}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("a gRPC peer no interceptor checked", func(t *testing.T) {
		// What the removed fallback read: a peer anyone can construct.
		if id, ok := security.PeerID(pki.PeerContext(ctx, victim)); ok {
			t.Errorf("PeerID = %s from a context the mesh never checked, want none", id)
		}
		forged := peer.NewContext(ctx, &peer.Peer{AuthInfo: credentials.TLSInfo{SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/payments").URL()}})
		if id, ok := security.PeerID(forged); ok {
			t.Errorf("PeerID = %s from a hand-made TLSInfo, want none", id)
		}
	})

	forgeries := []struct {
		name  string
		forge func(context.Context) context.Context
	}{
		{"unchanged", func(ctx context.Context) context.Context { return ctx }},
		{"peer replaced with the victim's certificate", func(ctx context.Context) context.Context { return pki.PeerContext(ctx, victim) }},
		{"peer replaced with a bare TLSInfo", func(ctx context.Context) context.Context {
			return peer.NewContext(ctx, &peer.Peer{AuthInfo: credentials.TLSInfo{SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/payments").URL()}})
		}},
		{"identity metadata added", func(ctx context.Context) context.Context {
			return metadata.NewIncomingContext(ctx, metadata.Pairs("x-spiffe-id", "spiffe://example.org/payments"))
		}},
		{"values under look-alike keys", func(ctx context.Context) context.Context {
			type peerIDKey struct{}
			return context.WithValue(context.WithValue(ctx, peerIDKey{}, spiffeid.RequireFromString("spiffe://example.org/payments")), "spiffe_id", "spiffe://example.org/payments")
		}},
	}
	for _, stream := range []bool{false, true} {
		for _, f := range forgeries {
			name := map[bool]string{false: "unary: ", true: "stream: "}[stream] + f.name
			t.Run(name, func(t *testing.T) {
				got, err := seen(pki.PeerContext(ctx, caller), stream, f.forge)
				if err != nil {
					t.Fatalf("interceptor: %v", err)
				}
				if got != "spiffe://example.org/clients/a" {
					t.Errorf("handler's PeerID = %s, want the handshake's spiffe://example.org/clients/a", got)
				}
			})
		}
	}

	t.Run("no exported setter", func(t *testing.T) {
		// A function that takes a SPIFFE ID and returns a context is how
		// the forgery was possible; none may come back.
		for _, fn := range exportedFuncs(t) {
			if takesID, returnsCtx := signatureOf(fn); takesID && returnsCtx {
				t.Errorf("security.%s takes a spiffeid.ID and returns a context: PeerID must come only from the handshake", fn.Name.Name)
			}
		}
	})
}

// goSources returns the contents of the non-test Go files in dir, by
// path.
func goSources(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = src
	}
	return out
}

// exportedFuncs returns the exported functions and methods of package
// security, whose PeerID the handlers read.
func exportedFuncs(t *testing.T) []*ast.FuncDecl {
	var out []*ast.FuncDecl
	fset := token.NewFileSet()
	for name, src := range goSources(t, "../../security") {
		f, err := parser.ParseFile(fset, name, src, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			if fn, ok := d.(*ast.FuncDecl); ok && fn.Name.IsExported() {
				out = append(out, fn)
			}
		}
	}
	if len(out) < 10 {
		t.Fatalf("found %d exported functions in the security package; the scan is broken", len(out))
	}
	return out
}

func signatureOf(fn *ast.FuncDecl) (takesID, returnsCtx bool) {
	for _, p := range fn.Type.Params.List {
		takesID = takesID || types.ExprString(p.Type) == "spiffeid.ID"
	}
	if fn.Type.Results != nil {
		for _, r := range fn.Type.Results.List {
			returnsCtx = returnsCtx || types.ExprString(r.Type) == "context.Context"
		}
	}
	return takesID, returnsCtx
}

// TestInterceptorsDropIdentityMetadata: metadata in which a proxy would
// name the verified caller can only come from the caller itself here, so
// the handler never sees it; other metadata passes.
func TestInterceptorsDropIdentityMetadata(t *testing.T) {
	ca := pki.NewCA(t, "example.org")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = pki.PeerContext(ctx, ca.Issue(t, pki.Leaf{URIs: []string{"spiffe://example.org/clients/a"}}))
	ctx = metadata.NewIncomingContext(ctx, metadata.Pairs(
		"x-forwarded-client-cert", `By=spiffe://example.org/server;URI=spiffe://example.org/payments`,
		"x-spiffe-id", "spiffe://example.org/payments",
		"idempotency-key", "k1",
	))
	unary, _ := meshtls.Interceptors(meshtls.AllowAll, nil)
	var got metadata.MD
	_, err := unary(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/rec.Registry/Trade"}, func(ctx context.Context, _ any) (any, error) {
		got, _ = metadata.FromIncomingContext(ctx)
		return nil, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(metadata.Pairs("idempotency-key", "k1"), got); diff != "" {
		t.Errorf("handler's metadata (-want +got):\n%s", diff)
	}
}

// badSANs are certificates crypto/x509 parses, each with the reason the
// mesh must give. go-spiffe accepts the first six: only the mesh's own SAN
// checks stand in their way.
func badSANs() []struct {
	name string
	sans []pki.SAN
	want string
} {
	const good = "spiffe://example.org/clients/a"
	return []struct {
		name string
		sans []pki.SAN
		want string
	}{
		{"DNS SAN with a NUL", []pki.SAN{pki.URI(good), pki.DNS("victim\x00.evil.org")}, "NUL byte"},
		{"DNS SAN with a control character", []pki.SAN{pki.URI(good), pki.DNS("victim\x1b.evil.org")}, "control character 0x1b"},
		{"DNS SAN with DEL", []pki.SAN{pki.URI(good), pki.DNS("victim\x7f.org")}, "control character 0x7f"},
		{"DNS SAN with a space", []pki.SAN{pki.URI(good), pki.DNS("victim .org")}, "space"},
		{"email SAN with a NUL", []pki.SAN{pki.URI(good), pki.Email("victim@example.org\x00evil")}, "NUL byte"},
		{"upper-case scheme that crypto/x509 folds", []pki.SAN{pki.URI("SPIFFE://example.org/clients/a")}, "is not a SPIFFE ID"},
		{"percent-encoded NUL", []pki.SAN{pki.URI("spiffe://example.org/clients/a%00evil")}, "percent-encoded"},
		{"percent-encoded slash", []pki.SAN{pki.URI("spiffe://example.org/clients%2Fa")}, "percent-encoded"},
		{"a second, non-SPIFFE URI SAN", []pki.SAN{pki.URI(good), pki.URI("https://evil.org/")}, "2 URI SANs"},
		{"URI SAN over 2048 bytes", []pki.SAN{pki.URI("spiffe://example.org/" + strings.Repeat("a", 2100))}, "at most 2048"},
	}
}

// TestSANChecksRefuseAmbiguousNames runs each bad certificate through both
// places the mesh reads a peer: VerifyPeer at the handshake (both sides,
// gRPC and HTTP) and the gRPC interceptors, which also guard connections
// verified by other credentials (grpc-go's xDS credentials).
func TestSANChecksRefuseAmbiguousNames(t *testing.T) {
	ca := pki.NewCA(t, "example.org")
	src := ca.NewSource(t, "spiffe://example.org/server")
	verify := meshtls.VerifyPeer(src, spiffeid.MatchAny())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range badSANs() {
		t.Run(tc.name, func(t *testing.T) {
			cert := ca.IssueSANs(t, tc.sans...)
			if _, err := x509.ParseCertificate(cert.Certificate[0]); err != nil {
				t.Fatalf("crypto/x509 refuses the certificate itself (%v): the case tests nothing of the mesh", err)
			}
			err := verify(tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert.Leaf}})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("VerifyPeer = %v, want an error containing %q", err, tc.want)
			}
			ran := false
			unary, _ := meshtls.Interceptors(meshtls.AllowAll, nil)
			_, err = unary(pki.PeerContext(ctx, cert), nil, &grpc.UnaryServerInfo{FullMethod: "/rec.Registry/Trade"}, func(context.Context, any) (any, error) {
				ran = true
				return nil, nil
			})
			if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), tc.want) || ran {
				t.Errorf("interceptor = %v (handler ran: %v), want UNAUTHENTICATED containing %q", err, ran, tc.want)
			}
		})
	}
	t.Run("a good SVID passes both", func(t *testing.T) {
		cert := ca.IssueSANs(t, pki.URI("spiffe://example.org/clients/a"), pki.DNS("a.example.org"))
		if err := verify(tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert.Leaf}}); err != nil {
			t.Errorf("VerifyPeer: %v", err)
		}
		if got, err := seen(pki.PeerContext(ctx, cert), false, func(ctx context.Context) context.Context { return ctx }); err != nil || got != "spiffe://example.org/clients/a" {
			t.Errorf("interceptor: PeerID %s, err %v", got, err)
		}
	})
}

// TestOnlyMeshtlsWritesTheVerifiedPeer: internal/peerctx.WithVerified is
// what makes security.PeerID report a caller, so no package but this one
// (which calls it with the handshake's ID) may call it. Within the module
// that is a rule, not a language guarantee: this test keeps it.
func TestOnlyMeshtlsWritesTheVerifiedPeer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "list", "-f", "{{.Dir}}", "github.com/gridmesh/gridmesh/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var writers []string
	for _, dir := range strings.Fields(string(out)) {
		for f, src := range goSources(t, dir) {
			if strings.Contains(string(src), "peerctx.WithVerified(") {
				writers = append(writers, filepath.Base(filepath.Dir(f))+"/"+filepath.Base(f))
			}
		}
	}
	slices.Sort(writers)
	if diff := cmp.Diff([]string{"meshtls/grpc.go", "meshtls/peer.go"}, writers); diff != "" {
		t.Errorf("files calling peerctx.WithVerified (-want +got):\n%s", diff)
	}
}
