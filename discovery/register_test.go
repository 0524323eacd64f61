package discovery_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"

	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/internal/endpointid"
	"github.com/gridmesh/gridmesh/internal/testutil/consul"
)

func healthOf(t *testing.T, c *api.Client, id string) (status string, svc *api.AgentService) {
	t.Helper()
	entries, _, err := c.Health().Service("trading", "", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Service.ID == id {
			return e.Checks.AggregatedStatus(), e.Service
		}
	}
	return "", nil
}

// TestRegisterHeartbeatDrainClose follows an instance through its life:
// registered passing with its SPIFFE ID in meta, kept passing past its TTL
// by heartbeats, critical when draining, gone after Close.
func TestRegisterHeartbeatDrainClose(t *testing.T) {
	f := consul.Start(t)
	c := f.Client()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	reg, err := discovery.New(discovery.Config{Consul: c, TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := reg.Register(ctx, discovery.Service{
		Name: "trading", Address: "127.0.0.1", Port: 9443, Tags: []string{"v2"},
		Meta: map[string]string{"version": "1.2"}, TTL: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got, want := r.ID(), "trading-127.0.0.1:9443"; got != want {
		t.Errorf("ID = %q, want %q", got, want)
	}
	status, svc := healthOf(t, c, r.ID())
	if status != api.HealthPassing || svc == nil {
		t.Fatalf("after Register: status %q", status)
	}
	if diff := cmp.Diff(map[string]string{"version": "1.2", "spiffe_id": "spiffe://example.org/service/trading"}, svc.Meta); diff != "" {
		t.Errorf("meta (-want +got):\n%s", diff)
	}
	// Several TTLs later it still passes: the heartbeat works. (Polling for
	// a failure that must not come; the wait is the assertion.)
	if _, failed := pollUntil(time.Second, func() bool { s, _ := healthOf(t, c, r.ID()); return s != api.HealthPassing }); failed {
		t.Fatal("check failed although the instance heartbeats")
	}
	if err := r.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if s, _ := healthOf(t, c, r.ID()); s != api.HealthCritical {
		t.Errorf("after Drain: status %q, want critical", s)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if s, svc := healthOf(t, c, r.ID()); svc != nil {
		t.Errorf("after Close: still registered (%s)", s)
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

// TestRegisterAgainWhenAgentLosesCheck: if the agent forgets the instance
// (state lost), the next heartbeat registers it again.
func TestRegisterAgainWhenAgentLosesCheck(t *testing.T) {
	f := consul.Start(t)
	c := f.Client()
	reg, ev := newRegistry(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := reg.Register(ctx, discovery.Service{Name: "trading", Port: 9443, TTL: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	f.RestartEmpty(t)
	if _, ok := pollUntil(5*time.Second, func() bool { s, _ := healthOf(t, c, r.ID()); return s == api.HealthPassing }); !ok {
		t.Fatal("instance not registered again after the agent lost it")
	}
	// The agent may list the instance a moment before the registry
	// reports it registered.
	if _, ok := pollUntil(5*time.Second, func() bool {
		return ev.count(discovery.HeartbeatFailed) > 0 && ev.count(discovery.Registered) >= 2
	}); !ok {
		t.Errorf("events: %d HeartbeatFailed, %d Registered; want >0 and >=2", ev.count(discovery.HeartbeatFailed), ev.count(discovery.Registered))
	}
}

func TestRegisterErrors(t *testing.T) {
	f := consul.Start(t)
	reg, _ := newRegistry(t, f)
	noConsul, _ := newRegistry(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tests := []struct {
		name string
		reg  *discovery.Registry
		svc  discovery.Service
		want string
	}{
		{"no name", reg, discovery.Service{Port: 1}, "Service.Name is required"},
		{"no port", reg, discovery.Service{Name: "x"}, "Service.Port 0"},
		{"no consul", noConsul, discovery.Service{Name: "x", Port: 1}, "no Consul client"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.reg.Register(ctx, tt.svc)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Register = %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if _, err := noConsul.Register(ctx, discovery.Service{Name: "x", Port: 1}); !errors.Is(err, discovery.ErrNoConsul) {
		t.Errorf("want ErrNoConsul, got %v", err)
	}
}

// recordingCC is a resolver.ClientConn that records the states it gets.
type recordingCC struct {
	resolver.ClientConn
	mu     sync.Mutex
	states []resolver.State
	errs   []error
}

func (r *recordingCC) UpdateState(s resolver.State) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.states = append(r.states, s)
	return nil
}

func (r *recordingCC) ReportError(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, err)
}

func (r *recordingCC) ParseServiceConfig(string) *serviceconfig.ParseResult { return nil }

func (r *recordingCC) last() (resolver.State, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.states) == 0 {
		return resolver.State{}, false
	}
	return r.states[len(r.states)-1], true
}

// TestResolverSetsExpectedIdentity: every address the resolvers hand gRPC
// carries the SPIFFE ID the endpoint must present.
func TestResolverSetsExpectedIdentity(t *testing.T) {
	f := consul.Start(t)
	c := f.Client()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	reg, err := discovery.New(discovery.Config{Consul: c, TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []struct {
		id   string
		port int
		meta map[string]string
	}{{"a", 1001, map[string]string{"spiffe_id": "spiffe://example.org/custom/a"}}, {"b", 1002, nil}} {
		if err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: s.id, Name: "trading", Address: "127.0.0.1", Port: s.port, Meta: s.meta, Check: &api.AgentServiceCheck{TTL: "1h", Status: api.HealthPassing}}); err != nil {
			t.Fatal(err)
		}
	}
	builders := map[string]resolver.Builder{}
	for _, b := range reg.ResolverBuilders() {
		builders[b.Scheme()] = b
	}
	tests := []struct {
		target string
		want   map[string]string // addr -> expected ID ("" = none)
	}{
		{"consul:///trading", map[string]string{"127.0.0.1:1001": "spiffe://example.org/custom/a", "127.0.0.1:1002": "spiffe://example.org/service/trading"}},
		{"static:///127.0.0.1:2001,127.0.0.1:2002?spiffe_id=spiffe://example.org/service/fixed", map[string]string{"127.0.0.1:2001": "spiffe://example.org/service/fixed", "127.0.0.1:2002": "spiffe://example.org/service/fixed"}},
		{"static:///127.0.0.1:2001", map[string]string{"127.0.0.1:2001": ""}},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			u, err := url.Parse(tt.target)
			if err != nil {
				t.Fatal(err)
			}
			cc := &recordingCC{}
			res, err := builders[u.Scheme].Build(resolver.Target{URL: *u}, cc, resolver.BuildOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer res.Close()
			var st resolver.State
			if _, ok := pollUntil(5*time.Second, func() bool { var ok bool; st, ok = cc.last(); return ok }); !ok {
				t.Fatal("no state pushed")
			}
			got := map[string]string{}
			for _, ep := range st.Endpoints {
				for _, a := range ep.Addresses {
					id, _ := endpointid.FromAttributes(a.Attributes)
					got[a.Addr] = ""
					if !id.IsZero() {
						got[a.Addr] = id.String()
					}
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("addresses and expected IDs (-want +got):\n%s", diff)
			}
		})
	}
}

// TestRegisterWithACLs runs against an agent with ACLs on and default deny:
// a token without service:write on the service gets an error naming the
// service and the permission, a token with it registers, heartbeats and
// deregisters.
func TestRegisterWithACLs(t *testing.T) {
	a := consul.Start(t, consul.WithACLs())
	writer := a.CreateToken(t, "trading-write", `service "trading" { policy = "write" }`)
	reader := a.CreateToken(t, "trading-read", `service "trading" { policy = "read" }`)
	tests := []struct {
		name    string
		token   string
		service string
		want    []string // substrings of the error; nil: registered
	}{
		{"no token", "", "trading", []string{`discovery: register "trading": the Consul token lacks service:write on "trading"`, `service "trading" { policy = "write" }`, "Consul said: Permission denied"}},
		{"read only", reader, "trading", []string{`the Consul token lacks service:write on "trading"`, "lacks permission 'service:write'"}},
		{"write on another service", writer, "billing", []string{`discovery: register "billing": the Consul token lacks service:write on "billing"`}},
		{"unknown token", "3f0c4a57-8ad1-4b5e-9d1e-6b2f6f0b9c11", "trading", []string{`discovery: register "trading": Consul does not know the token`, "ACL not found"}},
		{"write", writer, "trading", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg, err := discovery.New(discovery.Config{Consul: a.ClientWithToken(tt.token)})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			r, err := reg.Register(ctx, discovery.Service{Name: tt.service, Address: "127.0.0.1", Port: 9443, TTL: 300 * time.Millisecond})
			if tt.want != nil {
				if err == nil {
					_ = r.Close()
					t.Fatal("registered; want a permission error")
				}
				for _, w := range tt.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				var se api.StatusError
				if !errors.As(err, &se) || se.Code != 403 {
					t.Errorf("error %v does not wrap Consul's 403", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			// Passing several TTLs later: the heartbeat (a check update,
			// which needs service:write too) works with this token.
			mgmt := a.Client()
			if _, failed := pollUntil(time.Second, func() bool { s, _ := healthOf(t, mgmt, r.ID()); return s != api.HealthPassing }); failed {
				s, _ := healthOf(t, mgmt, r.ID())
				t.Fatalf("status %q with the write token, want passing", s)
			}
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			if _, svc := healthOf(t, mgmt, r.ID()); svc != nil {
				t.Error("still registered after Close")
			}
		})
	}
}
