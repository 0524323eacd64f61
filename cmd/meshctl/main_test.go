package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/internal/admin"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type echo struct {
	testgrpc.UnimplementedTestServiceServer
}

func (echo) UnaryCall(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{}, nil
}

// meshed runs a mesh server with the admin endpoint on, and makes two good
// calls, one unimplemented call and one denied call to it. It returns the
// admin address and the server's address.
func meshed(t *testing.T) (adminAddr, addr string) {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	source := devSources(t)
	admin, err := mesh.NewAdmin(freeAddr(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	authz, err := security.Rules(
		security.Refuse("no-guests", spiffeid.MatchID(spiffeid.RequireFromPath(td, "/guest"))),
		security.Allow("gateway", spiffeid.MatchID(spiffeid.RequireFromPath(td, "/gateway"))),
	)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := mesh.NewServer(mesh.WithIdentity(source("/trading")), mesh.WithAdmin(admin), mesh.WithAuthorizer(authz))
	if err != nil {
		t.Fatal(err)
	}
	testgrpc.RegisterTestServiceServer(srv, echo{})
	lis, err := newListener()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() { cancel(); srv.Close(); <-done })
	addr = lis.Addr().String()

	call := func(path string, n int, want codes.Code) {
		cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer ccancel()
		cc, err := mesh.Dial(cctx, addr, mesh.WithIdentity(source(path)), mesh.WithAdmin(admin))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		for range n {
			if _, err := testgrpc.NewTestServiceClient(cc).UnaryCall(cctx, &testpb.SimpleRequest{}); status.Code(err) != want {
				t.Fatalf("%s: UnaryCall: %v, want %v", path, err, want)
			}
		}
		if path == "/gateway" {
			if _, err := testgrpc.NewTestServiceClient(cc).EmptyCall(cctx, &testpb.Empty{}); status.Code(err) != codes.Unimplemented {
				t.Fatalf("EmptyCall: %v, want Unimplemented", err)
			}
		}
	}
	call("/gateway", 2, codes.OK)
	call("/guest", 1, codes.PermissionDenied)

	// The server records a call after its response: wait for all eight events.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var evs []json.RawMessage
		var out bytes.Buffer
		if err := run(context.Background(), []string{"-admin", admin.Addr(), "-o", "json", "explain", "spiffe://example.org/trading"}, &out, &out); err == nil {
			var ex struct{ Events []json.RawMessage }
			_ = json.Unmarshal(out.Bytes(), &ex)
			evs = ex.Events
		}
		if len(evs) >= 8 { // 4 client calls, 4 server calls (peer or destination is trading)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("admin endpoint shows %d events, want 8", len(evs))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return admin.Addr(), addr
}

var masks = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`(?m)^Process .*$`), "Process PID PROGRAM GOVERSION up DURATION"},
	{regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)`), "TIME"},
	{regexp.MustCompile(`\b(\d+(\.\d+)?(ns|µs|us|ms|s|m|h))+\b`), "DUR"},
	{regexp.MustCompile(`(?m)^(SERIAL\s+)[0-9a-f]+$`), "${1}SERIAL"},
	{regexp.MustCompile(`\b[0-9a-f]{16}…`), "SHA256"},
	{regexp.MustCompile(`[ \t]+`), " "},
}

func mask(s, addr string) string {
	s = strings.ReplaceAll(s, addr, "SERVER_ADDR")
	for _, m := range masks {
		s = m.re.ReplaceAllString(s, m.with)
	}
	return s
}

func TestCommandsAgainstLiveAdminEndpoint(t *testing.T) {
	adminAddr, addr := meshed(t)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"status", []string{"status"}},
		{"identity", []string{"identity"}},
		{"endpoints", []string{"endpoints", addr}},
		{"config", []string{"config"}},
		{"explain_target", []string{"explain", addr}},
		{"explain_caller", []string{"explain", "spiffe://example.org/guest"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var out, errOut bytes.Buffer
			if err := run(ctx, append([]string{"-admin", adminAddr}, tc.args...), &out, &errOut); err != nil {
				t.Fatalf("meshctl %v: %v\n%s", tc.args, err, errOut.String())
			}
			checkGolden(t, tc.name, mask(out.String(), addr), out.String())
		})
	}
}

// devSources returns a func giving identities spiffe://example.org/<path>
// from one dev CA, closed at cleanup.
func devSources(t *testing.T) func(path string) *security.DevSource {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	ca, err := security.NewDevCA(td, security.DevCAConfig{SVIDTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return func(path string) *security.DevSource {
		src, err := ca.Source(spiffeid.RequireFromPath(td, path))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { src.Close() })
		return src
	}
}

// checkGolden compares got with testdata/<name>.golden (rewriting it with
// -update); raw is the unmasked output, shown on a difference.
func checkGolden(t *testing.T, name, got, raw string) {
	t.Helper()
	golden := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("meshctl %s (-want +got):\n%s\nunmasked:\n%s", name, diff, raw)
	}
}

func TestJSONOutputDecodes(t *testing.T) {
	adminAddr, addr := meshed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, []string{"-admin", adminAddr, "-o", "json", "status"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	var st admin.Status
	if err := json.Unmarshal(out.Bytes(), &st); err != nil {
		t.Fatalf("status -o json is not an admin.Status: %v\n%s", err, out.String())
	}
	got := []string{}
	for _, tg := range st.Targets {
		got = append(got, tg.Target)
	}
	if diff := cmp.Diff([]string{addr}, got); diff != "" {
		t.Errorf("targets (-want +got):\n%s", diff)
	}
	if len(st.Denials) != 1 || st.Denials[0].Rule != "rule no-guests" {
		t.Errorf("denials = %+v, want one by rule no-guests", st.Denials)
	}
}

func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no command", []string{}, "no command given"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"bad output", []string{"-o", "yaml", "status"}, `-o "yaml": want table or json`},
		{"explain without target", []string{"explain"}, "explain needs one TARGET"},
		{"nothing listening", []string{"-admin", "127.0.0.1:1", "status"}, "is the process running with mesh.WithAdmin?"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var out bytes.Buffer
			err := run(ctx, tc.args, &out, &out)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("meshctl %v: error %v, want one containing %q", tc.args, err, tc.want)
			}
		})
	}
}
