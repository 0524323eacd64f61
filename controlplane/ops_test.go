package controlplane_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/controlplane/registration"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
)

func get(ctx context.Context, t *testing.T, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestOperationsEndpoints(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m := xdstest.StartMeshd(t, "", nil)
	base := "http://" + m.HTTPAddr
	if code, _ := get(ctx, t, base+"/healthz"); code != http.StatusServiceUnavailable {
		t.Errorf("/healthz before any config: %d, want 503", code)
	}
	if err := m.SetConfig("test", oneService(controlplane.Service{})); err != nil {
		t.Fatal(err)
	}
	xdstest.StartBackend(t, m, xdstest.BackendOptions{Name: "b1", Service: "trading"})
	c := xdstest.Dial(t, m.Addr, "trading", nil)
	waitServedBy(ctx, t, c, "b1")
	_ = m.SetConfig("bad", &controlplane.Config{Services: []controlplane.Service{{Name: "Bad"}}})

	if code, body := get(ctx, t, base+"/healthz"); code != http.StatusOK || !strings.Contains(body, m.Version()) {
		t.Errorf("/healthz: %d %q, want 200 with the version", code, body)
	}
	_, metrics := get(ctx, t, base+"/metrics")
	for _, want := range []string{
		"meshd_clients 2\n", // the backend's and the client's xDS streams
		"meshd_rejections_total 1\n",
		"meshd_config_loads_total 1\n",
		"meshd_registered_endpoints 1\n",
		`meshd_config_info{version="` + m.Version() + `"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, metrics)
		}
	}
	if !strings.Contains(metrics, "meshd_pushes_total ") || strings.Contains(metrics, "meshd_pushes_total 0\n") {
		t.Errorf("/metrics counts no pushes:\n%s", metrics)
	}

	_, dump := get(ctx, t, base+"/debug/config")
	var cfg struct {
		Version  string `json:"version"`
		Clusters []struct {
			Name string `json:"name"`
		} `json:"clusters"`
	}
	if err := json.Unmarshal([]byte(dump), &cfg); err != nil {
		t.Fatalf("/debug/config is not JSON: %v\n%s", err, dump)
	}
	if cfg.Version != m.Version() || len(cfg.Clusters) != 1 || cfg.Clusters[0].Name != "trading" {
		t.Errorf("/debug/config: %+v", cfg)
	}

	_, clients := get(ctx, t, base+"/debug/clients")
	var cs []controlplane.ClientStatus
	if err := json.Unmarshal([]byte(clients), &cs); err != nil {
		t.Fatalf("/debug/clients is not JSON: %v\n%s", err, clients)
	}
	var subscribed [][]string
	for _, c := range cs {
		subscribed = append(subscribed, c.Names["type.googleapis.com/envoy.config.listener.v3.Listener"])
	}
	found := map[string]bool{}
	for _, names := range subscribed {
		for _, n := range names {
			found[n] = true
		}
	}
	if !found["trading"] || len(found) != 2 {
		t.Errorf("listeners subscribed per client: %v, want the server listener and trading", subscribed)
	}
}

func TestHeartbeatRenewsAndDeregisters(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := xdstest.StartMeshd(t, "", nil)
	c := registration.NewClient(m.HTTPAddr)
	r := registration.Registration{Service: "a", Address: "127.0.0.1:9000", TTL: registration.Duration(600 * time.Millisecond)}
	hctx, hcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Heartbeat(hctx, r, nil) }()

	list := func() []registration.Registration {
		l, err := c.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	xdstest.WaitFor(ctx, t, "registered", func() error {
		if len(list()) != 1 {
			return xdstest.ErrNotYet
		}
		return nil
	})
	// Renewals keep it past several TTLs.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if diff := cmp.Diff([]registration.Registration{r}, list()); diff != "" {
			t.Fatalf("registration lapsed while renewed (-want +got):\n%s", diff)
		}
		time.Sleep(100 * time.Millisecond) // sampling over a window on purpose
	}
	hcancel()
	if err := <-done; err != nil && !errors.Is(err, registration.ErrNotFound) {
		t.Errorf("Heartbeat: %v", err)
	}
	if got := list(); len(got) != 0 {
		t.Errorf("still registered after Heartbeat returned: %v", got)
	}
}
