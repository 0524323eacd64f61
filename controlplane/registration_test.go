package controlplane_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gridmesh/gridmesh/controlplane/registration"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
)

func TestRegistrationAPIRefusesBadInput(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := xdstest.StartMeshd(t, "", nil)
	c := registration.NewClient(m.HTTPAddr)
	if err := c.Register(ctx, registration.Registration{Service: "a", Address: "127.0.0.1:9000"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		reg  registration.Registration
		want *registration.Error
	}{
		{"bad service", registration.Registration{Service: "Bad_Name", Address: "127.0.0.1:1"},
			&registration.Error{Status: 400, Message: `service "Bad_Name": use lower-case letters, digits, '-', '.' and '_'`}},
		{"space in service", registration.Registration{Service: "bad name", Address: "127.0.0.1:1"},
			&registration.Error{Status: 400, Message: `body is not a registration: field service: "bad name" holds a space at byte 3; registration values are printable ASCII`}},
		{"no port", registration.Registration{Service: "b", Address: "127.0.0.1"},
			&registration.Error{Status: 400, Message: `address "127.0.0.1" is not host:port, like 10.0.0.7:8443`}},
		{"bad spiffe id", registration.Registration{Service: "b", Address: "127.0.0.1:1", SPIFFEID: "b"},
			&registration.Error{Status: 400, Message: `spiffe_id "b" is not a SPIFFE ID (scheme is missing or invalid); write spiffe://<trust-domain>/<path>`}},
		{"address of another service", registration.Registration{Service: "b", Address: "127.0.0.1:9000"},
			&registration.Error{Status: 409, Message: `address 127.0.0.1:9000 is registered for service "a"; deregister it there first (a|127.0.0.1:9000)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := c.Register(ctx, tt.reg)
			var got *registration.Error
			if !errors.As(err, &got) {
				t.Fatalf("Register: %v, want a *registration.Error", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("error (-want +got):\n%s", diff)
			}
		})
	}
	if err := c.Deregister(ctx, "a", "127.0.0.1:1"); !errors.Is(err, registration.ErrNotFound) {
		t.Errorf("Deregister of nothing: %v, want ErrNotFound", err)
	}
}

func TestRegistrationTTLExpires(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := xdstest.StartMeshd(t, "", nil)
	c := registration.NewClient(m.HTTPAddr)
	short := registration.Registration{Service: "a", Address: "127.0.0.1:9000", TTL: registration.Duration(time.Second)}
	long := registration.Registration{Service: "a", Address: "127.0.0.1:9001", SPIFFEID: "spiffe://td/a"}
	for _, r := range []registration.Registration{short, long} {
		if err := c.Register(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	list, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]registration.Registration{short, long}, list); diff != "" {
		t.Errorf("registered (-want +got):\n%s", diff)
	}
	xdstest.WaitFor(ctx, t, "the TTL registration to expire", func() error {
		list, err := c.List(ctx)
		if err != nil {
			return err
		}
		if diff := cmp.Diff([]registration.Registration{long}, list); diff != "" {
			return errors.New(diff)
		}
		return nil
	})
	if got := len(m.Snapshot().Endpoints[0].GetEndpoints()[0].GetLbEndpoints()); got != 1 {
		t.Errorf("snapshot has %d endpoints for a, want 1", got)
	}
}

// TestRegistrationOnTheXDSPort: the HTTP API answers on the xDS address
// too, so a server registers where it gets its config.
func TestRegistrationOnTheXDSPort(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := xdstest.StartMeshd(t, "", nil)
	c := registration.NewClient(m.Addr)
	r := registration.Registration{Service: "a", Address: "127.0.0.1:9000"}
	if err := c.Register(ctx, r); err != nil {
		t.Fatal(err)
	}
	got, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]registration.Registration{r}, got); diff != "" {
		t.Errorf("registered (-want +got):\n%s", diff)
	}
	// And xDS still works on the same port.
	xdstest.StartBackend(t, m, xdstest.BackendOptions{Name: "b1", Service: "trading"})
	waitServedBy(ctx, t, xdstest.Dial(t, m.Addr, "trading", nil), "b1")
}
