package mesh_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

// TestMisplacedOptionsAreRefused checks that every option that does not
// apply to the constructor it is passed to makes the constructor fail with
// an error naming the option and where it belongs, instead of being
// silently ignored.
func TestMisplacedOptionsAreRefused(t *testing.T) {
	ca := newDevCA(t, time.Hour)
	src := devSource(t, ca, "/svc")
	reg, err := discovery.New(discovery.Config{})
	if err != nil {
		t.Fatal(err)
	}
	h := http.NotFoundHandler()
	serverCases := []struct {
		name  string
		build func(...mesh.ServerOption) error
		opt   mesh.ServerOption
		want  []string // substrings of the error
	}{
		{"NewHTTPServer/WithGRPCServerOptions", newHTTP(h), mesh.WithGRPCServerOptions(grpc.MaxRecvMsgSize(1)), []string{"WithGRPCServerOptions", "NewHTTPServer", "NewServer only"}},
		{"NewHTTPServer/WithXDSService", newHTTP(h), mesh.WithXDSService("trading", "v1"), []string{"WithXDSService", "NewServer only"}},
		{"NewHTTPServer/WithAdvertiseAddress", newHTTP(h), mesh.WithAdvertiseAddress("127.0.0.1:1"), []string{"WithAdvertiseAddress", "NewServer only"}},
		{"NewHTTPServer/WithoutControlPlaneRegistration", newHTTP(h), mesh.WithoutControlPlaneRegistration(), []string{"WithoutControlPlaneRegistration", "NewServer only"}},
		{"NewHTTPServer/WithControlPlane", newHTTP(h), mesh.WithControlPlane("127.0.0.1:1"), []string{"WithControlPlane", "NewServer and Dial and HTTPClient"}},
		{"NewHTTPServer/WithHealthAuthorization", newHTTP(h), mesh.WithHealthAuthorization(), []string{"WithHealthAuthorization", "NewServer only"}},
		{"NewServer/WithHTTPPathPolicy", newGRPC, mesh.WithHTTPPathPolicy(security.PathAllowParameters), []string{"WithHTTPPathPolicy", "NewHTTPServer only"}},
		{"NewServer/WithHTTPProtocols", newGRPC, mesh.WithHTTPProtocols(http.Protocols{}), []string{"WithHTTPProtocols", "NewHTTPServer and HTTPClient"}},
		{"NewHTTPServer/WithReflection", newHTTP(h), mesh.WithReflection(), []string{"WithReflection", "NewServer only"}},
	}
	for _, c := range serverCases {
		t.Run(c.name, func(t *testing.T) {
			err := c.build(mesh.WithIdentity(src), c.opt)
			if err == nil {
				t.Fatal("the constructor accepted an option that does not apply to it")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
	dialCases := []struct {
		name   string
		target string
		opt    mesh.DialOption
		want   []string
	}{
		{"Dial/WithControlPlane/static", "static:///127.0.0.1:1", mesh.WithControlPlane("127.0.0.1:1"), []string{"WithControlPlane", "xds:/// targets only"}},
		{"Dial/WithControlPlane/dns", "dns:///localhost:1", mesh.WithControlPlane("127.0.0.1:1"), []string{"WithControlPlane"}},
		{"Dial/WithRegistry/dns", "dns:///localhost:1", mesh.WithRegistry(reg), []string{"WithRegistry", "consul:/// and static:///"}},
		{"Dial/WithHTTPTarget", "static:///127.0.0.1:1", mesh.WithHTTPTarget("a", "static:///127.0.0.1:1"), []string{"WithHTTPTarget", "HTTPClient only"}},
		{"Dial/WithHTTPRoundTripper", "static:///127.0.0.1:1", mesh.WithHTTPRoundTripper(func(n http.RoundTripper) http.RoundTripper { return n }), []string{"WithHTTPRoundTripper", "HTTPClient only"}},
		{"Dial/WithHTTPProtocols", "static:///127.0.0.1:1", mesh.WithHTTPProtocols(http.Protocols{}), []string{"WithHTTPProtocols", "NewHTTPServer and HTTPClient"}},
	}
	for _, c := range dialCases {
		t.Run(c.name, func(t *testing.T) {
			cc, err := mesh.Dial(context.Background(), c.target, mesh.WithIdentity(src), c.opt)
			if err == nil {
				cc.Close()
				t.Fatal("Dial accepted an option that does not apply to it")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
	t.Run("Dial/xds/WithBalancer", func(t *testing.T) {
		cc, err := mesh.Dial(context.Background(), "xds:///trading", mesh.WithIdentity(src),
			mesh.WithControlPlane("127.0.0.1:1"), mesh.WithBalancer(discovery.Balancer{Policy: discovery.LeastRequest}))
		if err == nil {
			cc.Close()
			t.Fatal("Dial accepted WithBalancer for an xds:/// target, whose balancer meshd sets")
		}
		if !strings.Contains(err.Error(), "WithBalancer") || !strings.Contains(err.Error(), "lb_policy") {
			t.Errorf("error %q does not name WithBalancer and where the balancer is set", err)
		}
	})
	// HTTPClient follows Dial: meshd's cluster chooses an xds:/// target's
	// balancer, so WithBalancer is refused wherever a host would be one.
	for _, c := range []struct {
		name string
		opts []mesh.DialOption
	}{
		{"HTTPClient/xds target/WithBalancer", []mesh.DialOption{
			mesh.WithControlPlane("127.0.0.1:1"), mesh.WithHTTPTarget("trading", "xds:///trading")}},
		{"HTTPClient/WithControlPlane/WithBalancer", []mesh.DialOption{mesh.WithControlPlane("127.0.0.1:1")}},
	} {
		t.Run(c.name, func(t *testing.T) {
			opts := append([]mesh.DialOption{mesh.WithIdentity(src),
				mesh.WithBalancer(discovery.Balancer{Policy: discovery.LeastRequest})}, c.opts...)
			hc, err := mesh.HTTPClient(opts...)
			if err == nil {
				hc.CloseIdleConnections()
				t.Fatal("HTTPClient accepted WithBalancer for xds:/// hosts, whose balancer meshd sets")
			}
			if !strings.Contains(err.Error(), "WithBalancer") || !strings.Contains(err.Error(), "lb_policy") {
				t.Errorf("error %q does not name WithBalancer and where the balancer is set", err)
			}
		})
	}
	t.Run("HTTPClient/consul target/WithBalancer", func(t *testing.T) {
		hc, err := mesh.HTTPClient(mesh.WithIdentity(src), mesh.WithHTTPTarget("trading", "static:///127.0.0.1:1"),
			mesh.WithBalancer(discovery.Balancer{Policy: discovery.LeastRequest}))
		if err != nil {
			t.Fatalf("HTTPClient refused WithBalancer for a static:/// target, where it applies: %v", err)
		}
		hc.CloseIdleConnections()
	})
	t.Run("HTTPClient/WithGRPCDialOptions", func(t *testing.T) {
		c, err := mesh.HTTPClient(mesh.WithIdentity(src), mesh.WithGRPCDialOptions(grpc.WithUserAgent("x")))
		if err == nil {
			c.CloseIdleConnections()
			t.Fatal("HTTPClient accepted WithGRPCDialOptions")
		}
		if !strings.Contains(err.Error(), "WithGRPCDialOptions") || !strings.Contains(err.Error(), "Dial only") {
			t.Errorf("error %q does not name the option and where it belongs", err)
		}
	})
}

func newHTTP(h http.Handler) func(...mesh.ServerOption) error {
	return func(opts ...mesh.ServerOption) error {
		s, err := mesh.NewHTTPServer(h, opts...)
		if err == nil {
			s.Close()
		}
		return err
	}
}

func newGRPC(opts ...mesh.ServerOption) error {
	s, err := mesh.NewServer(opts...)
	if err == nil {
		s.Close()
	}
	return err
}
