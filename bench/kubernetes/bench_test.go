// Package kubernetes benchmarks meshd on a real Kubernetes API server
// (internal/testutil/kube): 1,000 Services with 10 endpoints each (10,000
// pods, 1,000 EndpointSlices), one endpoint change a second (an
// endpoint's ready condition flips), and 10 xDS clients each subscribed to
// the endpoints (EDS) of all 1,000 services, ACKing every response.
//
// Reported per run:
//
//	p50-ms, p99-ms, max-ms   time from the API server accepting a change
//	                         (the update call returning) to every client
//	                         having it
//	meshd-MB                 heap in use by meshd (Server, KubernetesSource
//	                         and its caches, the snapshot) with everything
//	                         loaded: runtime.MemStats HeapInuse after two GCs
//	                         with meshd synced, less the same taken before
//	                         meshd started (the API objects created, the
//	                         admin client's buffers allocated); clients
//	                         connect after
//	meshd-sync-s             time for meshd to list everything and build
//	                         the first snapshot
//
// Run (about two minutes plus one second per change):
//
//	go test -run '^$' -bench Kubernetes -benchtime 60x ./bench/kubernetes/
//
// Figures are in bench/RESULTS.md ("meshd on Kubernetes").
package kubernetes

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/internal/testutil/kube"
)

const (
	services  = 1000
	perSvc    = 10
	clients   = 10
	namespace = "bench"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func BenchmarkKubernetesChange(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	api := kube.Start(b)
	admin := api.Client(b, api.Admin)
	start := time.Now()
	seed(ctx, b, admin)
	b.Logf("created %d Services, %d pods and %d EndpointSlices in %v", services, services*perSvc, services, time.Since(start).Round(time.Second))

	heap0 := heapInuse()
	s := controlplane.NewServer()
	defer s.Close()
	syncStart := time.Now()
	src, err := controlplane.NewKubernetesSource(ctx, api.Client(b, api.Admin), s, controlplane.KubernetesConfig{TrustDomain: "cluster.test", Namespaces: []string{namespace}})
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	syncTook := time.Since(syncStart)
	heap1 := heapInuse()
	if st := src.Stats(); st.Services != services || st.Endpoints != services*perSvc {
		b.Fatalf("meshd read %d services and %d endpoints, want %d and %d", st.Services, st.Endpoints, services, services*perSvc)
	}

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = s.Serve(lis) }()
	defer func() { s.Close(); <-served }()

	names := make([]string, services)
	for i := range names {
		names[i] = svcName(i) + "." + namespace
	}
	events := make(chan event, 1024)
	var wg sync.WaitGroup
	cctx, stopClients := context.WithCancel(ctx)
	defer func() { stopClients(); wg.Wait() }()
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := edsClient(cctx, lis.Addr().String(), c, names, events); err != nil && cctx.Err() == nil {
				b.Errorf("client %d: %v", c, err)
			}
		}()
	}
	// Every client has the first snapshot.
	have := map[int]bool{}
	for len(have) < clients {
		select {
		case ev := <-events:
			have[ev.client] = true
		case <-ctx.Done():
			b.Fatal("clients never got the endpoints")
		}
	}

	var lat []time.Duration
	tick := time.NewTicker(time.Second) // one change a second
	defer tick.Stop()
	b.ResetTimer()
	for i := range b.N {
		<-tick.C
		svc := i % services
		ready := (i/services)%2 == 1 // first pass: not ready; second: ready again
		sl := slice(svc, ready)
		cur, err := admin.DiscoveryV1().EndpointSlices(namespace).Get(ctx, sl.Name, metav1.GetOptions{})
		if err != nil {
			b.Fatal(err)
		}
		sl.ResourceVersion = cur.ResourceVersion
		if _, err := admin.DiscoveryV1().EndpointSlices(namespace).Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		accepted := time.Now()
		want := corepb.HealthStatus_UNHEALTHY
		if ready {
			want = corepb.HealthStatus_HEALTHY
		}
		done := map[int]bool{}
		for len(done) < clients {
			select {
			case ev := <-events:
				if ev.cluster == names[svc] && ev.first == want {
					done[ev.client] = true
				}
			case <-ctx.Done():
				b.Fatalf("change %d not seen by every client", i)
			}
		}
		lat = append(lat, time.Since(accepted))
	}
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.5), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(float64(int64(heap1)-int64(heap0))/(1<<20), "meshd-MB")
	b.ReportMetric(syncTook.Seconds(), "meshd-sync-s")
	b.ReportMetric(0, "ns/op")
}

func svcName(i int) string { return "svc-" + strconv.Itoa(i) }

func podIP(svc, j int) string {
	n := svc*perSvc + j
	return fmt.Sprintf("10.%d.%d.%d", 100+n/65536, (n/256)%256, n%256)
}

// slice is the EndpointSlice of service svc, endpoint 0 ready or not.
func slice(svc int, ready0 bool) *discoveryv1.EndpointSlice {
	port, name := int32(8443), "grpc"
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: svcName(svc), Namespace: namespace, Labels: map[string]string{discoveryv1.LabelServiceName: svcName(svc)}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
	}
	for j := range perSvc {
		ready := j != 0 || ready0
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{podIP(svc, j)},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: namespace, Name: fmt.Sprintf("%s-%d", svcName(svc), j)},
		})
	}
	return sl
}

// seed creates the namespace, Services, pods and slices, 16 at a time.
func seed(ctx context.Context, b *testing.B, c kubernetes.Interface) {
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	work := make(chan int)
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := seedOne(ctx, c, i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for i := range services {
		select {
		case work <- i:
		case err := <-errs:
			b.Fatal(err)
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
}

func seedOne(ctx context.Context, c kubernetes.Interface, i int) error {
	for j := range perSvc {
		_, err := c.CoreV1().Pods(namespace).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", svcName(i), j), Labels: map[string]string{"app": svcName(i), "version": "v1"}},
			Spec:       corev1.PodSpec{ServiceAccountName: svcName(i), Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			return err
		}
	}
	if _, err := c.CoreV1().Services(namespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: svcName(i)},
		Spec:       corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Name: "grpc", Port: 8443}}},
	}, metav1.CreateOptions{}); err != nil {
		return err
	}
	_, err := c.DiscoveryV1().EndpointSlices(namespace).Create(ctx, slice(i, true), metav1.CreateOptions{})
	return err
}

// event is one cluster's endpoints as a client received them: the health
// of its first endpoint.
type event struct {
	client  int
	cluster string
	first   corepb.HealthStatus
}

// edsClient subscribes to the endpoints of names over ADS, ACKs every
// response, and reports each cluster's first endpoint's health whenever
// it changes.
func edsClient(ctx context.Context, addr string, id int, names []string, events chan<- event) error {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	stream, err := discoverypb.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	node := &corepb.Node{Id: "bench-" + strconv.Itoa(id)}
	req := &discoverypb.DiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, ResourceNames: names}
	if err := stream.Send(req); err != nil {
		return err
	}
	last := map[string]corepb.HealthStatus{}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		for _, r := range resp.GetResources() {
			var cla endpointpb.ClusterLoadAssignment
			if err := r.UnmarshalTo(&cla); err != nil {
				return err
			}
			var h corepb.HealthStatus
			if locs := cla.GetEndpoints(); len(locs) > 0 && len(locs[0].GetLbEndpoints()) > 0 {
				h = firstByAddress(locs[0].GetLbEndpoints())
			}
			if prev, ok := last[cla.ClusterName]; !ok || prev != h {
				last[cla.ClusterName] = h
				select {
				case events <- event{client: id, cluster: cla.ClusterName, first: h}:
				case <-ctx.Done():
					return nil
				}
			}
		}
		ack := &discoverypb.DiscoveryRequest{Node: node, TypeUrl: resp.GetTypeUrl(), ResourceNames: names,
			VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}
		if err := stream.Send(ack); err != nil {
			return err
		}
	}
}

// firstByAddress is the health of the endpoint with the address of each
// service's endpoint 0 (the lowest pod address of the service, which is
// the one the benchmark flips).
func firstByAddress(eps []*endpointpb.LbEndpoint) corepb.HealthStatus {
	best, bestAddr := corepb.HealthStatus_UNKNOWN, ""
	for _, e := range eps {
		a := e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress()
		if bestAddr == "" || ipLess(a, bestAddr) {
			best, bestAddr = e.GetHealthStatus(), a
		}
	}
	return best
}

func ipLess(a, b string) bool {
	pa, pb := net.ParseIP(a).To4(), net.ParseIP(b).To4()
	return slices.Compare(pa, pb) < 0
}

func heapInuse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}
