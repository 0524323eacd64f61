// Package xds benchmarks meshd's push path: N simulated xDS clients (one
// gRPC connection and one ADS stream each, subscribed to one service's
// listener, route, cluster and endpoints the way grpc-go subscribes, ACKing
// every response) run in a child process; meshd runs in the benchmark's
// process, so its CPU and memory are measured apart from the clients'.
//
// Each benchmark iteration changes the service's endpoints once and waits
// until every client has the change. Reported per run:
//
//	p50-ms, p99-ms, max-ms   time from the change to a client having it
//	meshd-cpu-ms/push        meshd process CPU (user+sys) per push
//	meshd-KB/client          meshd heap and stacks per connected client
//	heap-KB/client, stack-KB/client   the two parts
//
// Memory is runtime.MemStats HeapInuse plus StackInuse after two GCs with
// every client converged, less the same taken in the same run just before
// the clients connect (meshd serving, the swarm process started and the
// harness's own buffers allocated), divided by the number of clients.
//
// Run:
//
//	go test -run '^$' -bench EndpointPush -benchtime 20x ./bench/xds/
//	go test -run '^$' -bench 'EndpointPush/mtls/clients=10000$' -benchtime 10x ./bench/xds/

// The mtls runs are meshd as it serves in production (TLS 1.3, client
// SVIDs verified); the plaintext ones compare with figures measured before
// meshd had mTLS.
//
// 10,000 clients need about 10,100 open files in each of the two
// processes (ulimit -n) and 2-3 GB of memory, most of it the clients'.
//
// With GRIDMESH_BENCH_XDS_PROFILE=<dir> it also writes meshd's heap
// profile and goroutine dump, taken with every client connected, to
// <dir>/heap-<n>.pprof and <dir>/goroutine-<n>.txt (add -memprofilerate 1
// for exact heap figures).
//
// Figures, and where the memory per client goes, are in bench/RESULTS.md
// ("meshd: xDS push and memory per client").
package xds

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/internal/testutil/pki"
)

const (
	envAddr    = "GRIDMESH_BENCH_XDS_ADDR"
	envClients = "GRIDMESH_BENCH_XDS_CLIENTS"
	envProfile = "GRIDMESH_BENCH_XDS_PROFILE"
	envSVIDDir = "GRIDMESH_BENCH_XDS_SVID_DIR" // the swarm's SVID files, for mTLS
	service    = "trading"

	trustDomain = "bench.test"
	clientID    = "spiffe://" + trustDomain + "/bench-client"
)

// writeClientSVID writes the swarm's SVID and the trust bundle to files
// and returns the environment that points the swarm at them.
func writeClientSVID(b *testing.B, ca *pki.CA) []string {
	dir := b.TempDir()
	certs, key, err := ca.SVID(b, clientID).Marshal()
	if err != nil {
		b.Fatal(err)
	}
	bundle, err := ca.Bundle().Marshal()
	if err != nil {
		b.Fatal(err)
	}
	for name, data := range map[string][]byte{"svid.pem": certs, "key.pem": key, "bundle.pem": bundle} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	return []string{envSVIDDir + "=" + dir}
}

func TestMain(m *testing.M) {
	if addr := os.Getenv(envAddr); addr != "" {
		n, _ := strconv.Atoi(os.Getenv(envClients))
		if err := runSwarm(addr, n, os.Getenv(envSVIDDir), os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "swarm:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func BenchmarkEndpointPush(b *testing.B) {
	for _, mtls := range []bool{false, true} {
		name := "plaintext"
		if mtls {
			name = "mtls"
		}
		for _, n := range []int{100, 1000, 10000} {
			b.Run(fmt.Sprintf("%s/clients=%d", name, n), func(b *testing.B) { benchPush(b, n, mtls) })
		}
	}
}

func endpoints(k int) []controlplane.Endpoint {
	eps := make([]controlplane.Endpoint, k)
	for i := range eps {
		eps[i] = controlplane.Endpoint{Service: service, Address: fmt.Sprintf("10.0.%d.%d:8443", i/250, i%250+1)}
	}
	return eps
}

// memInuse is meshd's live memory: heap and goroutine stacks (each ADS
// stream holds several goroutines: transport reader and writer, keepalive,
// handler, request receiver).
func memInuse() (heap, stack uint64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse, ms.StackInuse
}

// writeProfiles writes meshd's heap and goroutine profiles with every
// client connected to dir/heap-<n>.pprof and dir/goroutine-<n>.txt.
func writeProfiles(b *testing.B, dir string, n int) {
	for _, p := range []struct {
		name, file string
		debug      int
	}{{"heap", fmt.Sprintf("heap-%d.pprof", n), 0}, {"goroutine", fmt.Sprintf("goroutine-%d.txt", n), 1}} {
		f, err := os.Create(filepath.Join(dir, p.file))
		if err != nil {
			b.Fatal(err)
		}
		err = pprof.Lookup(p.name).WriteTo(f, p.debug)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchPush runs n clients against meshd, in plaintext or over mTLS as
// meshd serves in production (meshd's SVID from a test CA, every client
// presenting one client SVID of the same trust domain, TLS 1.3).
func benchPush(b *testing.B, n int, mtls bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	transport := controlplane.WithInsecurePlaintextForLocalDebugging()
	var clientEnv []string
	if mtls {
		ca := pki.NewCA(b, trustDomain)
		transport = controlplane.WithMTLS(controlplane.MTLSConfig{Source: ca.NewSource(b, "spiffe://"+trustDomain+controlplane.DefaultID)})
		clientEnv = writeClientSVID(b, ca)
	}
	s := controlplane.NewServer(transport)
	defer s.Close()
	if err := s.SetConfig("bench", &controlplane.Config{Services: []controlplane.Service{{Name: service}}}); err != nil {
		b.Fatal(err)
	}
	const base = 10 // endpoints in the service; a push adds or removes one
	if err := s.SetEndpoints("bench", endpoints(base)); err != nil {
		b.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = s.Serve(lis) }()
	defer func() { s.Close(); <-served }()

	// Start the swarm and everything the harness holds before taking the
	// baseline, so only meshd's memory for the clients counts; the swarm
	// connects when told to on stdin.
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envAddr+"="+lis.Addr().String(), envClients+"="+strconv.Itoa(n))
	cmd.Env = append(cmd.Env, clientEnv...)
	cmd.Stderr = os.Stderr
	start, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cancel(); _ = cmd.Wait() }()
	events := make(chan swarmEvent, 4*n)
	go readSwarm(out, events)
	have := make([]int, n)

	heapBefore, stackBefore := memInuse()
	if _, err := io.WriteString(start, "go\n"); err != nil {
		b.Fatal(err)
	}

	// Wait until every client has the initial endpoints.
	waitAll := func(want int, since time.Time) []time.Duration {
		lat := make([]time.Duration, 0, n)
		done := 0
		for i := range have {
			if have[i] == want {
				done++
			}
		}
		for done < n {
			select {
			case ev, ok := <-events:
				if !ok {
					b.Fatal("swarm exited")
				}
				if have[ev.client] != want && ev.endpoints == want {
					done++
					lat = append(lat, ev.at.Sub(since))
				}
				have[ev.client] = ev.endpoints
			case <-ctx.Done():
				b.Fatalf("%d of %d clients converged: %v", done, n, ctx.Err())
			}
		}
		return lat
	}
	waitAll(base, time.Now())
	heapAfter, stackAfter := memInuse()
	if dir := os.Getenv(envProfile); dir != "" {
		writeProfiles(b, dir, n)
	}
	if st := s.Stats(); st.Clients < n {
		b.Fatalf("meshd sees %d streams, want %d", st.Clients, n)
	}

	var all []time.Duration
	var cpu time.Duration
	b.ResetTimer()
	for i := range b.N {
		want := base + 1
		if i%2 == 1 {
			want = base
		}
		c0 := cpuTime()
		t0 := time.Now()
		if err := s.SetEndpoints("bench", endpoints(want)); err != nil {
			b.Fatal(err)
		}
		all = append(all, waitAll(want, t0)...)
		cpu += cpuTime() - c0
	}
	b.StopTimer()
	slices.Sort(all)
	pct := func(p float64) float64 {
		return float64(all[int(p*float64(len(all)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(all[len(all)-1])/float64(time.Millisecond), "max-ms")
	b.ReportMetric(float64(cpu)/float64(time.Millisecond)/float64(b.N), "meshd-cpu-ms/push")
	heap := float64(int64(heapAfter)-int64(heapBefore)) / 1024 / float64(n)
	stack := float64(int64(stackAfter)-int64(stackBefore)) / 1024 / float64(n)
	b.ReportMetric(heap+stack, "meshd-KB/client")
	b.ReportMetric(heap, "heap-KB/client")
	b.ReportMetric(stack, "stack-KB/client")
}

type swarmEvent struct {
	client, endpoints int
	at                time.Time
}

// readSwarm parses "eds <client> <endpoints> <unixnano>" lines.
func readSwarm(r io.Reader, events chan<- swarmEvent) {
	defer close(events)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 4 || f[0] != "eds" {
			continue
		}
		c, _ := strconv.Atoi(f[1])
		e, _ := strconv.Atoi(f[2])
		ns, _ := strconv.ParseInt(f[3], 10, 64)
		events <- swarmEvent{client: c, endpoints: e, at: time.Unix(0, ns)}
	}
}
