package mesh_test

import (
	"context"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/internal/testutil/pki"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

// TestReflection: with WithReflection a caller the authorizer allows lists
// the server's services over grpc.reflection.v1, as grpcurl does; a caller
// it denies gets PERMISSION_DENIED; without the option the service is not
// there at all.
func TestReflection(t *testing.T) {
	ca := pki.NewCA(t, "example.org")
	tool := ca.NewSource(t, "spiffe://example.org/ops/grpcurl")
	other := ca.NewSource(t, "spiffe://example.org/clients/other")
	// The tool may use reflection only; nobody may call the test service.
	authz := security.Authorizer(func(ctx context.Context, call security.Call) error {
		if call.Caller == id("/ops/grpcurl") && call.Method == reflectionpb.ServerReflection_ServerReflectionInfo_FullMethodName {
			return nil
		}
		return &security.DeniedError{Caller: call.Caller, Target: call.Method, Rule: "test: reflection for the tool only"}
	})

	list := func(t *testing.T, addr string, src security.Source) ([]string, codes.Code) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cc, err := mesh.Dial(ctx, addr, mesh.WithIdentity(src))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		stream, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
		if err != nil {
			return nil, status.Code(err)
		}
		if err := stream.Send(&reflectionpb.ServerReflectionRequest{
			MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
		}); err != nil {
			// A stream the server already ended fails Send with io.EOF;
			// Recv gives its status.
			_, err = stream.Recv()
			return nil, status.Code(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			return nil, status.Code(err)
		}
		var names []string
		for _, s := range resp.GetListServicesResponse().GetService() {
			names = append(names, s.GetName())
		}
		sort.Strings(names)
		return names, codes.OK
	}

	server := func(t *testing.T, opts ...mesh.ServerOption) string {
		return startServer(t, &identityService{}, append([]mesh.ServerOption{
			mesh.WithIdentity(ca.NewSource(t, "spiffe://example.org/server")), mesh.WithAuthorizer(authz)}, opts...)...)
	}

	t.Run("allowed caller lists the services", func(t *testing.T) {
		got, code := list(t, server(t, mesh.WithReflection()), tool)
		want := []string{"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
			"grpc.reflection.v1alpha.ServerReflection", "grpc.testing.TestService"}
		if code != codes.OK || !cmp.Equal(got, want) {
			t.Errorf("list = %v, %v; want %v, OK", got, code, want)
		}
	})
	t.Run("denied caller refused", func(t *testing.T) {
		if got, code := list(t, server(t, mesh.WithReflection()), other); code != codes.PermissionDenied {
			t.Errorf("list = %v, %v; want PermissionDenied", got, code)
		}
	})
	t.Run("off by default", func(t *testing.T) {
		if got, code := list(t, server(t), tool); code != codes.Unimplemented {
			t.Errorf("list = %v, %v; want Unimplemented (no reflection service)", got, code)
		}
	})
	t.Run("GetServiceInfo", func(t *testing.T) {
		srv, err := mesh.NewServer(mesh.WithIdentity(ca.NewSource(t, "spiffe://example.org/server")))
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		info := srv.GetServiceInfo()
		if _, ok := info["grpc.health.v1.Health"]; !ok {
			t.Errorf("GetServiceInfo = %v, want the health service", info)
		}
	})
	t.Run("NewHTTPServer refuses the option", func(t *testing.T) {
		err := newHTTP(http.NotFoundHandler())(mesh.WithIdentity(ca.NewSource(t, "spiffe://example.org/server")), mesh.WithReflection())
		if err == nil || !containsAll(err.Error(), "WithReflection", "NewServer") {
			t.Errorf("NewHTTPServer(WithReflection) = %v, want an error naming the option and NewServer", err)
		}
	})
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
