package controlplane_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/controlplane/registration"
	"github.com/gridmesh/gridmesh/internal/meshtls"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
	"github.com/gridmesh/gridmesh/security"
)

// mtlsMeshd is a meshd serving over mTLS as spiffe://rec.test/meshd with
// spiffe://rec.test/ops as operator, and the CA its clients' SVIDs come
// from.
type mtlsMeshd struct {
	*xdstest.Meshd
	ca *security.DevCA
}

func startMTLSMeshd(t *testing.T, cfg *controlplane.Config) *mtlsMeshd {
	t.Helper()
	ca := newMeshCA(t)
	m := xdstest.StartMeshd(t, "", cfg, controlplane.WithMTLS(controlplane.MTLSConfig{
		Source:    devSource(t, ca, serviceID("meshd")),
		Operators: []spiffeid.ID{spiffeid.RequireFromString(serviceID("ops"))},
	}))
	return &mtlsMeshd{Meshd: m, ca: ca}
}

// tlsFor is the client TLS config of workload (a path in rec.test),
// accepting only meshd's ID.
func (m *mtlsMeshd) tlsFor(t *testing.T, workload string) *tls.Config {
	return meshtls.ClientTLSConfig(devSource(t, m.ca, serviceID(workload)), spiffeid.MatchID(spiffeid.RequireFromString(serviceID("meshd"))))
}

// as returns a registration client for workload.
func (m *mtlsMeshd) as(t *testing.T, workload string) *registration.Client {
	c := registration.NewTLSClient(m.tlsFor(t, workload), m.HTTPAddr)
	t.Cleanup(func() { c.Close() })
	return c
}

// refusal is what a registration call came back with: "" for success,
// else the status and the rule meshd named.
func refusal(err error) string {
	if err == nil {
		return ""
	}
	var re *registration.Error
	if !errors.As(err, &re) {
		return "error: " + err.Error()
	}
	rule := "-"
	if _, after, ok := strings.Cut(re.Message, "forbidden by rule "); ok {
		rule, _, _ = strings.Cut(after, ":")
	}
	return http.StatusText(re.Status) + " " + rule
}

// TestRegistrationAuthorizedByIdentity: a workload registers and
// deregisters only endpoints with its own SPIFFE ID, of services the
// config gives no other identity, and never replaces another identity's
// registration; an operator may do all of it; each refusal is 403 naming
// the rule.
func TestRegistrationAuthorizedByIdentity(t *testing.T) {
	m := startMTLSMeshd(t, &controlplane.Config{Services: []controlplane.Service{{Name: "ledger", SPIFFEID: serviceID("ledger")}}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	reg := func(service, addr, id string) registration.Registration {
		r := registration.Registration{Service: service, Address: addr}
		if id != "" {
			r.SPIFFEID = serviceID(id)
		}
		return r
	}
	if err := m.as(t, "trading").Register(ctx, reg("trading", "127.0.0.1:9001", "trading")); err != nil {
		t.Fatalf("trading registers itself: %v", err)
	}
	tests := []struct {
		name, caller string
		do           func(c *registration.Client) error
		want         string
	}{
		{"own endpoint", "trading", func(c *registration.Client) error {
			return c.Register(ctx, reg("trading", "127.0.0.1:9002", "trading"))
		}, ""},
		{"another identity's spiffe_id", "trading", func(c *registration.Client) error {
			return c.Register(ctx, reg("trading", "127.0.0.1:9003", "settlement"))
		}, "Forbidden own-identity"},
		{"no spiffe_id", "trading", func(c *registration.Client) error {
			return c.Register(ctx, reg("trading", "127.0.0.1:9004", ""))
		}, "Forbidden own-identity"},
		{"service the config gives another identity", "trading", func(c *registration.Client) error {
			return c.Register(ctx, reg("ledger", "127.0.0.1:9005", "trading"))
		}, "Forbidden service-identity"},
		{"replace another identity's registration", "intruder", func(c *registration.Client) error {
			return c.Register(ctx, reg("trading", "127.0.0.1:9001", "intruder"))
		}, "Forbidden owner"},
		{"deregister another identity's endpoint", "intruder", func(c *registration.Client) error {
			return c.Deregister(ctx, "trading", "127.0.0.1:9001")
		}, "Forbidden own-identity"},
		{"deregister own endpoint", "trading", func(c *registration.Client) error {
			return c.Deregister(ctx, "trading", "127.0.0.1:9002")
		}, ""},
		{"operator registers for another identity", "ops", func(c *registration.Client) error {
			return c.Register(ctx, reg("ledger", "127.0.0.1:9006", "ledger"))
		}, ""},
		{"operator deregisters another identity's endpoint", "ops", func(c *registration.Client) error {
			return c.Deregister(ctx, "trading", "127.0.0.1:9001")
		}, ""},
		{"any workload lists endpoints", "intruder", func(c *registration.Client) error {
			_, err := c.List(ctx)
			return err
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmpDiff(tt.want, refusal(tt.do(m.as(t, tt.caller)))); diff != "" {
				t.Errorf("%s: outcome (-want +got):\n%s", tt.caller, diff)
			}
		})
	}
	list, err := m.as(t, "ops").List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range list {
		got = append(got, r.Service+" "+r.Address+" "+r.SPIFFEID)
	}
	if diff := cmpDiff([]string{"ledger 127.0.0.1:9006 " + serviceID("ledger")}, got); diff != "" {
		t.Errorf("registrations left (-want +got):\n%s", diff)
	}
}

// TestDebugIsForOperators: /debug shows every identity's RBAC, so only an
// operator reads it; /metrics and /healthz need only an authenticated
// caller.
func TestDebugIsForOperators(t *testing.T) {
	m := startMTLSMeshd(t, &controlplane.Config{Services: []controlplane.Service{{Name: "trading"}}})
	get := func(workload, path string) (int, string) {
		t.Helper()
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: m.tlsFor(t, workload)}, Timeout: 10 * time.Second}
		defer hc.CloseIdleConnections()
		resp, err := hc.Get("https://" + m.HTTPAddr + path)
		if err != nil {
			t.Fatalf("GET %s as %s: %v", path, workload, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		workload, path string
		want           int
	}{
		{"trading", "/debug/config", http.StatusForbidden},
		{"trading", "/debug/clients", http.StatusForbidden},
		{"ops", "/debug/config", http.StatusOK},
		{"trading", "/metrics", http.StatusOK},
		{"trading", "/healthz", http.StatusOK},
	} {
		code, body := get(tc.workload, tc.path)
		if code != tc.want {
			t.Errorf("GET %s as %s: %d %s, want %d", tc.path, tc.workload, code, body, tc.want)
		}
		if code == http.StatusForbidden && !strings.Contains(body, `"rule":"operator-only"`) {
			t.Errorf("GET %s as %s: refusal %s does not name the rule operator-only", tc.path, tc.workload, body)
		}
	}
}

// TestMeshdRefusesUnauthenticatedConnections: without a client SVID of
// meshd's trust domain nothing gets through, on the HTTP API or xDS; a
// client that expects another ID for meshd does not talk to it either.
func TestMeshdRefusesUnauthenticatedConnections(t *testing.T) {
	m := startMTLSMeshd(t, nil)
	other, err := security.NewDevCA(spiffeid.RequireTrustDomainFromString("other.test"), security.DevCAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	impostorCA := newMeshCA(t) // same trust domain, another CA
	// Each client trusts meshd's CA, so the refusal is meshd's.
	bundleOf := func(src *security.DevSource, td string) *x509bundle.Bundle {
		b, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString(td))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	meshdBundle := bundleOf(devSource(t, m.ca, serviceID("probe")), meshTD)
	otherSrc := devSource(t, other, "spiffe://other.test/trading")
	foreign := mixedSource{otherSrc, x509bundle.NewSet(meshdBundle, bundleOf(otherSrc, "other.test"))}
	impostor := mixedSource{devSource(t, impostorCA, serviceID("trading")), x509bundle.NewSet(meshdBundle)}
	tests := []struct {
		name   string
		client *registration.Client
	}{
		{"plaintext", registration.NewClient(m.HTTPAddr)},
		{"TLS without a client certificate", registration.NewTLSClient(&tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}, m.HTTPAddr)},
		{"SVID of another trust domain", registration.NewTLSClient(meshtls.ClientTLSConfig(foreign, spiffeid.MatchAny()), m.HTTPAddr)},
		{"SVID from another CA of the trust domain", registration.NewTLSClient(meshtls.ClientTLSConfig(impostor, spiffeid.MatchAny()), m.HTTPAddr)},
		{"client expecting another meshd ID", registration.NewTLSClient(meshtls.ClientTLSConfig(devSource(t, m.ca, serviceID("trading")), spiffeid.MatchID(spiffeid.RequireFromString(serviceID("other-meshd")))), m.HTTPAddr)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer tt.client.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := tt.client.List(ctx); err == nil {
				t.Fatal("the endpoint list was served")
			}
			err := tt.client.Register(ctx, registration.Registration{Service: "trading", Address: "127.0.0.1:9001", SPIFFEID: serviceID("trading")})
			if err == nil {
				t.Fatal("the registration was accepted")
			}
		})
	}
	if st := m.Stats(); st.Registered != 0 {
		t.Errorf("%d endpoints registered, want 0", st.Registered)
	}

	// xDS: a plaintext client and one with a foreign SVID get no stream.
	for name, creds := range map[string]credentials.TransportCredentials{
		"plaintext":                    insecure.NewCredentials(),
		"SVID of another trust domain": meshtls.ClientCredentials(foreign, spiffeid.MatchAny()),
		"SVID from another CA":         meshtls.ClientCredentials(impostor, spiffeid.MatchAny()),
		"good SVID, wrong meshd ID":    meshtls.ClientCredentials(devSource(t, m.ca, serviceID("trading")), spiffeid.MatchID(spiffeid.RequireFromString(serviceID("other-meshd")))),
	} {
		t.Run("xDS/"+name, func(t *testing.T) {
			_, err := fetchListeners(t, m.Addr, creds, "node", "trading")
			if err == nil {
				t.Fatal("meshd answered an xDS request")
			}
		})
	}
}

// mixedSource is an SVID with bundles of the test's choosing.
type mixedSource struct {
	svid    x509svid.Source
	bundles x509bundle.Source
}

func (s mixedSource) GetX509SVID() (*x509svid.SVID, error) { return s.svid.GetX509SVID() }

func (mixedSource) Close() error { return nil }

func (s mixedSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.bundles.GetX509BundleForTrustDomain(td)
}

// adsStream opens an ADS stream to addr with creds.
func adsStream(t *testing.T, addr string, creds credentials.TransportCredentials) (discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesClient, func(), error) {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	stream, err := discoverypb.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		cancel()
		cc.Close()
		return nil, nil, err
	}
	return stream, func() { cancel(); cc.Close() }, nil
}

// fetchListeners asks for the listeners names on a new ADS stream as node
// and returns the names of the listeners meshd answers with.
func fetchListeners(t *testing.T, addr string, creds credentials.TransportCredentials, node string, names ...string) ([]string, error) {
	t.Helper()
	stream, done, err := adsStream(t, addr, creds)
	if err != nil {
		return nil, err
	}
	defer done()
	if err := stream.Send(&discoverypb.DiscoveryRequest{Node: &corepb.Node{Id: node}, TypeUrl: resourcev3.ListenerType, ResourceNames: names}); err != nil {
		return nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	var got []string
	for _, r := range resp.GetResources() {
		var l listenerpb.Listener
		if err := r.UnmarshalTo(&l); err != nil {
			t.Fatal(err)
		}
		got = append(got, l.GetName())
	}
	sort.Strings(got)
	return got, nil
}

// TestServerListenerOnlyForItsIdentity: a server-side listener, and the
// RBAC in it, goes only to a stream authenticated as the server's SPIFFE
// ID, whatever node ID the stream sends; a wildcard request gets no
// listener of anyone; client listeners go to any identity.
func TestServerListenerOnlyForItsIdentity(t *testing.T) {
	m := startMTLSMeshd(t, &controlplane.Config{MTLS: true, Services: []controlplane.Service{{Name: "trading",
		Authorization: []controlplane.Policy{{Name: "gateway", Sources: []string{serviceID("gateway")}, Methods: []string{"/rec.Trading/*"}}}}}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const addr = "127.0.0.1:9101"
	if err := m.as(t, "trading").Register(ctx, registration.Registration{Service: "trading", Address: addr, SPIFFEID: serviceID("trading")}); err != nil {
		t.Fatal(err)
	}
	own := controlplane.ServerListenerName(serviceID("trading"), addr)
	creds := func(workload string) credentials.TransportCredentials {
		return meshtls.ClientCredentials(devSource(t, m.ca, serviceID(workload)), spiffeid.MatchID(spiffeid.RequireFromString(serviceID("meshd"))))
	}
	tests := []struct {
		name, workload, node string
		names                []string
		want                 []string
	}{
		{"the server's own identity", "trading", "trading-1", []string{own, "trading"}, []string{own, "trading"}},
		{"another identity claiming the server's node ID", "intruder", "trading-1", []string{own, "trading"}, []string{"trading"}},
		{"another identity, wildcard", "intruder", "x", []string{"*", "trading"}, []string{"trading"}},
		{"the server's own identity, grpc-go's default name", "trading", "trading-1", []string{controlplane.ServerListenerName("", addr), "trading"}, []string{"trading"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := fetchListeners(t, m.Addr, creds(tt.workload), tt.node, tt.names...)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmpDiff(tt.want, got); diff != "" {
				t.Errorf("listeners sent to %s (-want +got):\n%s", tt.workload, diff)
			}
		})
	}

	// A request left with nothing it may see is not a wildcard: it is
	// answered with no listener at all.
	for _, names := range [][]string{nil, {"*"}, {own}} {
		got, err := fetchListeners(t, m.Addr, creds("intruder"), "x", names...)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 0 {
			t.Errorf("request for %q as intruder answered with %v, want no listener", names, got)
		}
	}

	// meshd shows each stream with its verified identity beside the node
	// ID it claimed, and counts what it refused.
	stream, done, err := adsStream(t, m.Addr, creds("intruder"))
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	if err := stream.Send(&discoverypb.DiscoveryRequest{Node: &corepb.Node{Id: "trading-1"}, TypeUrl: resourcev3.ListenerType, ResourceNames: []string{own, "trading"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if n := m.Stats().DeniedListeners; n == 0 {
		t.Error("Stats().DeniedListeners is 0 after refusals")
	}
	xdstest.WaitFor(ctx, t, "the intruder's stream in Clients", func() error {
		for _, c := range m.Clients() {
			if c.Identity == serviceID("intruder") && c.Node == "trading-1" {
				return nil
			}
		}
		return errors.New("not listed")
	})
}

// TestDeltaXDSRefusedUnderMTLS: incremental xDS, which meshd does not
// filter by identity, is refused.
func TestDeltaXDSRefusedUnderMTLS(t *testing.T) {
	m := startMTLSMeshd(t, nil)
	cc, err := grpc.NewClient(m.Addr, grpc.WithTransportCredentials(meshtls.ClientCredentials(devSource(t, m.ca, serviceID("trading")), spiffeid.MatchAny())))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := discoverypb.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.Send(&discoverypb.DeltaDiscoveryRequest{TypeUrl: resourcev3.ListenerType, ResourceNamesSubscribe: []string{"*"}})
	if _, err := stream.Recv(); status.Code(err) != codes.Unimplemented {
		t.Errorf("delta stream: %v, want Unimplemented", err)
	}
}

// TestPlaintextRefusedByDefault: a meshd given neither WithMTLS nor the
// plaintext option does not serve, and says how to choose.
func TestPlaintextRefusedByDefault(t *testing.T) {
	s := controlplane.NewServer()
	defer s.Close()
	for name, serve := range map[string]func(net.Listener) error{"Serve": s.Serve, "ServeHTTP": s.ServeHTTP} {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		err = serve(lis)
		if err == nil || !strings.Contains(err.Error(), "WithMTLS") || !strings.Contains(err.Error(), "-insecure-plaintext-xds-for-local-debugging") {
			t.Errorf("%s: %v, want a refusal naming WithMTLS and the plaintext flag", name, err)
		}
	}
}
