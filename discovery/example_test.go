package discovery_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/internal/testutil/consul"
)

func ExampleBalancer_ServiceConfig() {
	sc, err := discovery.Balancer{Policy: discovery.RingHash, HashHeader: "x-market-id"}.ServiceConfig()
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(sc)
	// Output: {"loadBalancingConfig":[{"gridmesh_ring_hash":{"hashHeader":"x-market-id"}}]}
}

func ExampleParseTarget() {
	t, err := discovery.ParseTarget("consul:///trading?tag=v2&dc=eu1")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(t.Service, t.Tags, t.Datacenter)
	// Output: trading [v2] eu1
}

func ExampleServiceID() {
	id, _ := discovery.ServiceID(spiffeid.RequireTrustDomainFromString("example.org"), "trading")
	fmt.Println(id)
	// Output: spiffe://example.org/service/trading
}

func ExampleRegistry_Watch() {
	reg, _ := discovery.New(discovery.Config{})
	w, err := reg.Watch("static:///10.0.0.2:8443,10.0.0.1:8443", nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	eps, err := w.Wait(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, ep := range eps {
		fmt.Println(ep.Addr)
	}
	// Output:
	// 10.0.0.1:8443
	// 10.0.0.2:8443
}

// TestLoggerReportsConsulUnreachable: with WithLogger the Registry logs a
// lost Consul at warning level, tagged component=discovery.
func TestLoggerReportsConsulUnreachable(t *testing.T) {
	f := consul.Start(t)
	f.Stop(t)
	var buf syncBuffer
	reg, err := discovery.New(discovery.Config{Consul: f.Client(), RetryMin: 10 * time.Millisecond, RetryMax: 20 * time.Millisecond},
		discovery.WithLogger(slog.New(slog.NewTextHandler(&buf, nil))))
	if err != nil {
		t.Fatal(err)
	}
	w, err := reg.Watch("consul:///trading", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := pollUntil(5*time.Second, func() bool { return strings.Contains(buf.String(), "consul unreachable") }); !ok {
		t.Fatalf("no log line; got %q", buf.String())
	}
	_ = w.Close()
	line := strings.SplitN(buf.String(), "\n", 2)[0]
	for _, want := range []string{"level=WARN", "component=discovery", "target=consul:///trading", "attempt=1"} {
		if !strings.Contains(line, want) {
			t.Errorf("log line %q lacks %q", line, want)
		}
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func ExampleWatch_Next() {
	reg, _ := discovery.New(discovery.Config{})
	w, _ := reg.Watch("static:///10.0.0.1:80,10.0.0.2:80", nil)
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := w.Wait(ctx); err != nil {
		fmt.Println(err)
		return
	}
	for range 3 {
		ep, _ := w.Next()
		fmt.Println(ep.Addr)
	}
	// Output:
	// 10.0.0.1:80
	// 10.0.0.2:80
	// 10.0.0.1:80
}
