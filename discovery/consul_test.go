package discovery_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/hashicorp/consul/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/gridmesh/gridmesh/discovery"
	"github.com/gridmesh/gridmesh/internal/testutil/consul"
)

// loadLoop calls conn from workers goroutines until stopped, counting
// calls per backend and failures.
type loadLoop struct {
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	counts  map[string]int
	first   map[string]time.Time // when each backend first answered
	last    map[string]time.Time // when each backend last answered
	failed  atomic.Int64
	lastErr atomic.Value
}

// startLoad runs workers loops of calls, each pausing pace between calls
// (to leave CPU to the rest of the machine in long tests).
func startLoad(conn *grpc.ClientConn, workers int, pace time.Duration) *loadLoop {
	l := &loadLoop{stop: make(chan struct{}), counts: map[string]int{}, first: map[string]time.Time{}, last: map[string]time.Time{}}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				case <-time.After(pace):
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				name, err := call(ctx, conn, "k"+strconv.Itoa(w)+"-"+strconv.Itoa(i))
				cancel()
				if err != nil {
					l.failed.Add(1)
					l.lastErr.Store(err)
					continue
				}
				l.mu.Lock()
				l.counts[name]++
				if l.counts[name] == 1 {
					l.first[name] = time.Now()
				}
				l.last[name] = time.Now()
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *loadLoop) count(name string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.counts[name]
}

func (l *loadLoop) firstCall(name string) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.first[name]
}

func (l *loadLoop) lastCall(name string) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last[name]
}

func (l *loadLoop) halt() {
	close(l.stop)
	l.wg.Wait()
}

// TestEndpointChangesReachClient: a new instance starts getting calls, and
// a deregistered, a draining (check failing) and a crashed instance stop
// getting them, each within 2 seconds, with no failed calls except those
// in flight to the killed backend.
func TestEndpointChangesReachClient(t *testing.T) {
	f := consul.Start(t)
	reg, _ := newRegistry(t, f)
	bs := startBackends(t, 5)
	regs := map[string]*discovery.Registration{}
	for _, b := range bs[:3] {
		regs[b.name] = registerBackend(t, reg, "trading", b)
	}
	registerRaw(t, f.Client(), "trading", bs[4], "1h", nil) // b4: to be killed
	conn := dial(t, reg, "consul:///trading", discovery.Balancer{})
	const workers = 4
	load := startLoad(conn, workers, 0)
	defer load.halt()
	if _, ok := pollUntil(10*time.Second, func() bool { return load.count("b0") > 0 && load.count("b4") > 0 }); !ok {
		t.Fatal("calls do not reach the initial backends")
	}

	// Added: b3 registers.
	start := time.Now()
	registerBackend(t, reg, "trading", bs[3])
	took, ok := pollUntil(2*time.Second, func() bool { return load.count("b3") > 0 })
	if !ok {
		t.Errorf("new instance b3 got no calls within 2s")
	}
	t.Logf("added instance: first call after %v", took.Round(time.Millisecond))
	_ = start

	stopsWithin := func(what, name string, act func()) {
		t.Helper()
		act()
		at := time.Now()
		took, ok := pollUntil(2*time.Second, func() bool {
			last := load.lastCall(name)
			// Calls answered within the last 50ms could have been picked
			// before the change; wait until none answered recently.
			return time.Since(last) > 100*time.Millisecond && last.Before(time.Now().Add(-100*time.Millisecond))
		})
		if !ok {
			t.Errorf("%s: %s still gets calls 2s later", what, name)
		}
		t.Logf("%s: %s got its last call %v after the change (measured %v)", what, name, load.lastCall(name).Sub(at).Round(time.Millisecond), took.Round(time.Millisecond))
	}
	stopsWithin("deregistered", "b0", func() {
		if err := regs["b0"].Close(); err != nil {
			t.Fatal(err)
		}
	})
	stopsWithin("draining (check critical)", "b1", func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := regs["b1"].Drain(ctx); err != nil {
			t.Fatal(err)
		}
	})
	if n := load.failed.Load(); n != 0 {
		t.Errorf("%d calls failed during graceful changes; last error %v", n, load.lastErr.Load())
	}
	stopsWithin("killed", "b4", func() { bs[4].srv.Stop() })
	if n := load.failed.Load(); n > workers {
		t.Errorf("%d calls failed after killing b4; want at most the %d in flight; last error %v", n, workers, load.lastErr.Load())
	}
	t.Logf("failed calls after killing b4: %d (workers in flight: %d)", load.failed.Load(), workers)
}

// TestCrashedInstanceDropsOut: an instance that stops heartbeating turns
// critical when its TTL lapses and leaves the endpoint set.
func TestCrashedInstanceDropsOut(t *testing.T) {
	f := consul.Start(t)
	reg, _ := newRegistry(t, f)
	bs := startBackends(t, 2)
	registerBackend(t, reg, "trading", bs[0])
	registerRaw(t, f.Client(), "trading", bs[1], "500ms", nil) // never heartbeats after this
	w, err := reg.Watch("consul:///trading", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, ok := pollUntil(10*time.Second, func() bool {
		eps := w.Endpoints()
		return len(eps) == 1 && eps[0].Addr == bs[0].addr
	}); !ok {
		t.Fatalf("crashed instance still listed: %v", w.Endpoints())
	}
}

// loadOnKnown starts n backends, registers the first known of them as
// trading instances (heartbeating, TTL 2s), and runs two paced load workers
// through consul:///trading, stopped when the test ends, until each known
// instance has answered.
func loadOnKnown(t *testing.T, f *consul.Agent, n, known int) ([]*backend, *eventLog, *loadLoop) {
	t.Helper()
	reg, ev := newRegistry(t, f)
	bs := startBackends(t, n)
	for _, b := range bs[:known] {
		registerBackend(t, reg, "trading", b)
	}
	conn := dial(t, reg, "consul:///trading", discovery.Balancer{})
	load := startLoad(conn, 2, 5*time.Millisecond)
	t.Cleanup(load.halt) // before conn closes: cleanups run last-in first
	if _, ok := pollUntil(10*time.Second, func() bool {
		for _, b := range bs[:known] {
			if load.count(b.name) == 0 {
				return false
			}
		}
		return true
	}); !ok {
		t.Fatal("calls do not reach all known instances")
	}
	return bs, ev, load
}

// TestConsulDown30Seconds: with the Consul agent killed for 30 seconds,
// calls through consul:/// keep succeeding on the last endpoints; when the
// agent is back, an instance registered then gets calls. It logs the
// figures: calls made while the agent was down (all must succeed), how long
// the agent took to come back, and how long after its return a new
// registration got its first call.
func TestConsulDown30Seconds(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 30 seconds")
	}
	f := consul.Start(t)
	bs, ev, load := loadOnKnown(t, f, 4, 3)

	f.Stop(t)
	before := map[string]int{"b0": load.count("b0"), "b1": load.count("b1"), "b2": load.count("b2")}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if n := load.failed.Load(); n != 0 {
			t.Fatalf("%d calls failed while Consul was down: %v", n, load.lastErr.Load())
		}
		time.Sleep(250 * time.Millisecond) // the load loop runs meanwhile; this only paces the checks
	}
	downCalls := 0
	for name, n := range before {
		if load.count(name) == n {
			t.Errorf("%s got no calls while Consul was down", name)
		}
		downCalls += load.count(name) - n
	}
	if ev.count(discovery.SourceUnreachable) == 0 {
		t.Error("no SourceUnreachable event while Consul was down")
	}
	t.Logf("Consul down 30s: %d calls, %d failed, %d SourceUnreachable events", downCalls, load.failed.Load(), ev.count(discovery.SourceUnreachable))

	restartAt := time.Now()
	f.Restart(t)
	back := time.Now()
	registerRaw(t, f.Client(), "trading", bs[3], "1h", nil)
	if _, ok := pollUntil(10*time.Second, func() bool { return load.count("b3") > 0 }); !ok {
		t.Fatal("instance registered after Consul returned got no calls")
	}
	seen := load.firstCall("b3").Sub(back)
	if _, ok := pollUntil(5*time.Second, func() bool { return ev.count(discovery.SourceRecovered) > 0 }); !ok {
		t.Error("no SourceRecovered event")
	}
	t.Logf("after Consul returned (restart took %v): the instance registered then got its first call %v after the agent was back",
		back.Sub(restartAt).Round(time.Millisecond), seen.Round(time.Millisecond))
	if n := load.failed.Load(); n != 0 {
		t.Errorf("%d calls failed: %v", n, load.lastErr.Load())
	}
}

// TestConsulPartitionKeepsEndpoints: with the agent frozen (SIGSTOP, as a
// partition looks: connections stay open and hang instead of being
// refused), calls keep succeeding on the last endpoints, and the watch
// reports Consul unreachable once its blocking query outlives
// consulwatch.QueryTimeout; after the agent resumes, a new registration
// gets calls.
func TestConsulPartitionKeepsEndpoints(t *testing.T) {
	f := consul.Start(t)
	bs, ev, load := loadOnKnown(t, f, 3, 2)
	f.Pause(t)
	at := time.Now()
	before := load.count("b0") + load.count("b1")
	// newRegistry's queries wait 2s: QueryTimeout(2s) is 4.125s.
	reportedAfter, reported := pollUntil(10*time.Second, func() bool {
		return ev.count(discovery.SourceUnreachable) > 0 || load.failed.Load() != 0
	})
	if n := load.failed.Load(); n != 0 {
		t.Fatalf("%d calls failed while Consul was partitioned: %v", n, load.lastErr.Load())
	}
	if !reported {
		t.Errorf("no SourceUnreachable event %v into the partition", time.Since(at).Round(time.Millisecond))
	}
	during := load.count("b0") + load.count("b1") - before
	if during == 0 {
		t.Fatal("no calls while Consul was partitioned")
	}
	f.Resume(t)
	partition := time.Since(at)
	registerRaw(t, f.Client(), "trading", bs[2], "1h", nil)
	took, ok := pollUntil(10*time.Second, func() bool { return load.count("b2") > 0 })
	if !ok {
		t.Fatal("instance registered after the partition got no calls")
	}
	t.Logf("partition %v: %d calls, %d failed, reported unreachable after %v; after it healed, a new instance got calls %v after registering",
		partition.Round(time.Millisecond), during, load.failed.Load(), reportedAfter.Round(time.Millisecond), took.Round(time.Millisecond))
	if n := load.failed.Load(); n != 0 {
		t.Errorf("%d calls failed: %v", n, load.lastErr.Load())
	}
}

// TestWatchFollowsIndexGoingBackwards: when Consul's index goes backwards
// (an agent that comes back with empty state), the watch starts over and
// sees the new state.
func TestWatchFollowsIndexGoingBackwards(t *testing.T) {
	f := consul.Start(t)
	// The query blocked on the old, higher index returns only when its wait
	// ends (Consul's semantics), so keep the wait short.
	reg, err := discovery.New(discovery.Config{Consul: f.Client(), WaitTime: 500 * time.Millisecond, RetryMin: 50 * time.Millisecond, RetryMax: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	bs := startBackends(t, 2)
	c := f.Client()
	for i := range 20 { // push the index up, above where a fresh agent starts
		registerRaw(t, c, "other", &backend{name: "o" + strconv.Itoa(i), host: "127.0.0.1", port: 1000 + i}, "1h", nil)
	}
	registerRaw(t, c, "trading", bs[0], "1h", nil)
	_, before, err := c.Health().Service("trading", "", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	w, err := reg.Watch("consul:///trading", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := w.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	f.RestartEmpty(t)
	registerRaw(t, c, "trading", bs[1], "1h", nil)
	_, after, err := c.Health().Service("trading", "", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if after.LastIndex >= before.LastIndex {
		t.Fatalf("index %d after the restart, %d before: it did not go backwards, so this test tests nothing", after.LastIndex, before.LastIndex)
	}
	if _, ok := pollUntil(10*time.Second, func() bool {
		eps := w.Endpoints()
		return len(eps) == 1 && eps[0].Addr == bs[1].addr
	}); !ok {
		t.Fatalf("after the index went backwards (%d -> %d) the watch shows %v, want only %s", before.LastIndex, after.LastIndex, w.Endpoints(), bs[1].addr)
	}
}

// TestWatchEndpointsTagsDCAndIdentity checks the endpoint sets a watch
// produces: tag and datacenter filters, passing only, and the expected
// SPIFFE ID from meta or derived from the trust domain.
func TestWatchEndpointsTagsDCAndIdentity(t *testing.T) {
	f := consul.Start(t)
	dc2 := consul.Start(t, consul.WithDatacenter("dc2"))
	f.JoinWAN(t, dc2)
	c := f.Client()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	reg, err := discovery.New(discovery.Config{Consul: c, TrustDomain: td, RetryMin: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	reg1 := func(id string, port int, tags []string, meta map[string]string, status string) {
		must(c.Agent().ServiceRegister(&api.AgentServiceRegistration{
			ID: id, Name: "trading", Address: "127.0.0.1", Port: port, Tags: tags, Meta: meta,
			Check: &api.AgentServiceCheck{TTL: "1h", Status: status},
		}))
	}
	reg1("a", 1001, []string{"v1"}, map[string]string{"spiffe_id": "spiffe://example.org/custom/a"}, api.HealthPassing)
	reg1("b", 1002, []string{"v2"}, nil, api.HealthPassing)
	reg1("c", 1003, []string{"v2"}, nil, api.HealthCritical)
	reg1("d", 1004, []string{"v2"}, map[string]string{"spiffe_id": "not a spiffe id"}, api.HealthPassing)
	_, err = c.Catalog().Register(&api.CatalogRegistration{
		Datacenter: "dc2", Node: "n2", Address: "10.0.0.2",
		Service: &api.AgentService{ID: "e", Service: "trading", Port: 1005},
		Checks:  api.HealthChecks{{CheckID: "e", ServiceID: "e", Status: api.HealthPassing}},
	}, nil)
	must(err)

	derived := spiffeid.RequireFromString("spiffe://example.org/service/trading")
	tests := []struct {
		target string
		want   []discovery.Endpoint
	}{
		{"consul:///trading", []discovery.Endpoint{
			{Addr: "127.0.0.1:1001", ID: spiffeid.RequireFromString("spiffe://example.org/custom/a"), Tags: []string{"v1"}, Meta: map[string]string{"spiffe_id": "spiffe://example.org/custom/a"}, Weight: 1},
			{Addr: "127.0.0.1:1002", ID: derived, Tags: []string{"v2"}, Meta: map[string]string{}, Weight: 1},
		}},
		{"consul:///trading?tag=v2", []discovery.Endpoint{
			{Addr: "127.0.0.1:1002", ID: derived, Tags: []string{"v2"}, Meta: map[string]string{}, Weight: 1},
		}},
		{"consul:///trading?tag=v3", []discovery.Endpoint{}},
		{"consul:///trading?dc=dc2", []discovery.Endpoint{
			{Addr: "10.0.0.2:1005", ID: derived, Weight: 1},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			w, err := reg.Watch(tt.target, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			got, err := w.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// Consul answers nil or empty tags and meta depending on how an
			// instance was registered; either means none.
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b spiffeid.ID) bool { return a == b }), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("endpoints (-want +got):\n%s", diff)
			}
		})
	}
}

// TestWatchFailsBeforeFirstSetWhenConsulDown: with no endpoint set known, a
// watch reports the failure to its callback and Wait gives up with it.
func TestWatchFailsBeforeFirstSetWhenConsulDown(t *testing.T) {
	f := consul.Start(t)
	reg, ev := newRegistry(t, f)
	f.Stop(t)
	errs := make(chan error, 10)
	w, err := reg.Watch("consul:///trading", func(_ []discovery.Endpoint, err error) {
		select {
		case errs <- err:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	select {
	case err := <-errs:
		if err == nil {
			t.Fatal("want an error, got an endpoint set")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no error reported")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := w.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait = %v, want a deadline error", err)
	}
	if ev.count(discovery.SourceUnreachable) == 0 {
		t.Error("no SourceUnreachable event")
	}
}
