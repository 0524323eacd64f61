package kubernetes_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/xds"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"

	"github.com/gridmesh/gridmesh/controlplane"
	"github.com/gridmesh/gridmesh/internal/testutil/kube"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
	"github.com/gridmesh/gridmesh/internal/xdsbootstrap"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/security"
)

// td is the trust domain of the tests' workloads.
const td = "cluster.test"

// ns is the namespace the tests' services live in.
const ns = "shop"

// manifestDir holds the deploy manifests the tests apply.
var manifestDir = filepath.Join("..", "..", "deploy", "kubernetes")

// saID is the SPIFFE ID of service account sa in ns.
func saID(namespace, sa string) string {
	return spiffeid.RequireFromSegments(spiffeid.RequireTrustDomainFromString(td), "ns", namespace, "sa", sa).String()
}

// env is a real API server, a meshd fed by it through a KubernetesSource
// running as the user "meshd" with only the deploy manifest's ClusterRole,
// and a dev CA for the workloads.
type env struct {
	api   *kube.APIServer
	admin kubernetes.Interface
	meshd *xdstest.Meshd
	src   *controlplane.KubernetesSource
	ca    *security.DevCA
	// meshdUser is the rest.Config meshd runs with.
	meshdUser *rest.Config
}

// startEnv starts the API server, binds the user "meshd" to the ClusterRole
// of deploy/kubernetes/meshd.yaml, creates namespace ns, and starts meshd
// (mtls: true) with a KubernetesSource watching ns as that user.
func startEnv(t *testing.T) *env {
	t.Helper()
	e := startAPI(t)
	e.startMeshd(t, controlplane.KubernetesConfig{TrustDomain: td, Namespaces: []string{ns}})
	return e
}

// startAPIOnly starts the API server alone.
func startAPIOnly(t *testing.T) *kube.APIServer {
	t.Helper()
	return kube.Start(t)
}

// startAPI is startEnv without meshd.
func startAPI(t *testing.T) *env {
	t.Helper()
	api := kube.Start(t)
	e := &env{api: api, admin: api.Client(t, api.Admin)}
	ca, err := security.NewDevCA(spiffeid.RequireTrustDomainFromString(td), security.DevCAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	e.ca = ca
	ctx := testCtx(t, 30*time.Second)
	e.bindManifestRole(ctx, t, "meshd")
	e.meshdUser = api.AddUser(t, "meshd")
	if _, err := e.admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return e
}

// startMeshd starts meshd with a KubernetesSource as e.meshdUser.
func (e *env) startMeshd(t *testing.T, cfg controlplane.KubernetesConfig) {
	t.Helper()
	e.meshd = xdstest.StartMeshd(t, "", &controlplane.Config{MTLS: true})
	ctx := testCtx(t, 60*time.Second)
	src, err := controlplane.NewKubernetesSource(ctx, e.api.Client(t, e.meshdUser), e.meshd.Server, cfg)
	if err != nil {
		t.Fatalf("NewKubernetesSource: %v", err)
	}
	t.Cleanup(func() { _ = src.Close() })
	e.src = src
}

// bindManifestRole creates the ClusterRole of deploy/kubernetes/meshd.yaml
// (if not there yet) and binds user to it.
func (e *env) bindManifestRole(ctx context.Context, t *testing.T, user string) {
	t.Helper()
	var role *rbacv1.ClusterRole
	for _, o := range decodeManifest(t, filepath.Join(manifestDir, "meshd.yaml")) {
		if r, ok := o.(*rbacv1.ClusterRole); ok {
			role = r
		}
	}
	if role == nil {
		t.Fatal("deploy/kubernetes/meshd.yaml has no ClusterRole")
	}
	if _, err := e.admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	e.bind(ctx, t, user, role.Name)
}

// bind binds user to the ClusterRole role.
func (e *env) bind(ctx context.Context, t *testing.T, user, role string) {
	t.Helper()
	_, err := e.admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user + "-" + role},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// decodeManifest decodes every document of a YAML manifest strictly (an
// unknown field is an error) into the typed objects of client-go's scheme,
// and a kind not in it into *unknownObject.
func decodeManifest(t *testing.T, path string) []runtime.Object {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	strict := json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme.Scheme, scheme.Scheme, json.SerializerOptions{Yaml: true, Strict: true})
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out []runtime.Object
	for i := 0; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: document %d: %v", path, i, err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		obj, gvk, err := strict.Decode(doc, nil, nil)
		if runtime.IsNotRegisteredError(err) {
			out = append(out, &unknownObject{gvk: gvk.String(), doc: doc})
			continue
		}
		if err != nil {
			t.Fatalf("%s: document %d: %v", path, i, err)
		}
		out = append(out, obj)
	}
}

// unknownObject is a manifest document of a kind client-go does not know
// (a CRD's).
type unknownObject struct {
	runtime.Object
	gvk string
	doc []byte
}

func stripComments(doc []byte) []byte {
	var out [][]byte
	for _, l := range bytes.Split(doc, []byte("\n")) {
		if t := bytes.TrimSpace(l); len(t) > 0 && t[0] != '#' {
			out = append(out, l)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

// testCtx returns a context that ends after d or at cleanup.
func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// The tests' pod network. EndpointSlices may not hold loopback addresses
// (the API server refuses them), so pods get addresses in 10.244.0.0/16,
// as from a CNI, and the test maps them onto loopback: a workload listens
// on 127.0.0.x and reports its listener as 10.244.0.x (so it asks meshd
// for the server-side listener of its pod address, as a pod listening on
// its pod IP does), and clients dial through podDialer, which reaches
// 10.244.0.x at 127.0.0.x. Everything meshd sees and serves is the pod
// addresses.
const podNet = "10.244."

// loopbackOf is the loopback address a pod address is served on.
func loopbackOf(podIP string) string { return "127.0." + strings.TrimPrefix(podIP, podNet) }

// podDialer dials pod addresses on their loopback stand-ins.
func podDialer(ctx context.Context, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(host, podNet) {
		host = loopbackOf(host)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", net.JoinHostPort(host, port))
}

// podListener is a listener on loopback that reports the pod address.
type podListener struct {
	net.Listener
	addr *net.TCPAddr
}

func (l podListener) Addr() net.Addr { return l.addr }

// workload is a meshed gRPC server standing in for a pod: an xDS server
// (grpc-go's xds.NewGRPCServer with the mesh's bootstrap) at a pod
// address, with an SVID for a service account. UnaryCall answers with
// ServerId set to its name.
type workload struct {
	name string
	ip   string
	port int32
	// hits counts calls that reached the handler.
	hits atomic.Int64
	// hold, when set, makes the next UnaryCall wait until it is closed.
	hold atomic.Pointer[chan struct{}]
	// started receives a value when a held call arrives.
	started chan struct{}
}

type workloadService struct {
	testgrpc.UnimplementedTestServiceServer
	w *workload
}

func (s workloadService) UnaryCall(ctx context.Context, _ *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	s.w.hits.Add(1)
	if h := s.w.hold.Swap(nil); h != nil {
		select {
		case s.w.started <- struct{}{}:
		default:
		}
		select {
		case <-*h:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return &testgrpc.SimpleResponse{ServerId: s.w.name}, nil
}

// startWorkloads starts one workload per pod address, all on one port
// (the pods of a Deployment listen on the same port), each presenting
// ids[i].
func (e *env) startWorkloads(t *testing.T, names, ips, ids []string) []*workload {
	t.Helper()
	var out []*workload
	port := 0
	for i, ip := range ips {
		lis, err := net.Listen("tcp", net.JoinHostPort(loopbackOf(ip), strconv.Itoa(port)))
		if err != nil {
			t.Fatalf("listen for %s: %v", names[i], err)
		}
		port = lis.Addr().(*net.TCPAddr).Port
		w := &workload{name: names[i], ip: ip, port: int32(port), started: make(chan struct{}, 1)}
		plis := podListener{Listener: lis, addr: &net.TCPAddr{IP: net.ParseIP(ip), Port: port}}
		bc := e.meshd.Bootstrap(t, devSource(t, e.ca, ids[i]))
		bc.ServerIdentity = ids[i] // meshd names the pod's listener after its SPIFFE ID
		sopts, err := xdsbootstrap.ServerOptions(bc, nil)
		if err != nil {
			t.Fatal(err)
		}
		srv, err := xds.NewGRPCServer(sopts...)
		if err != nil {
			t.Fatal(err)
		}
		testgrpc.RegisterTestServiceServer(srv, workloadService{w: w})
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.Serve(plis) }()
		t.Cleanup(func() { srv.Stop(); <-done })
		out = append(out, w)
	}
	return out
}

func devSource(t *testing.T, ca *security.DevCA, id string) *security.DevSource {
	t.Helper()
	src, err := ca.Source(spiffeid.RequireFromString(id))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	return src
}

// createPod creates a pod (which no kubelet runs) under service account sa
// with labels.
func (e *env) createPod(ctx context.Context, t *testing.T, name, sa string, labels map[string]string) {
	t.Helper()
	_, err := e.admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			Containers:         []corev1.Container{{Name: "app", Image: "example.invalid/app"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
}

// createService creates a Service with one port named grpc and annotations.
func (e *env) createService(ctx context.Context, t *testing.T, name string, port int32, annotations map[string]string) {
	t.Helper()
	_, err := e.admin.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Name: "grpc", Port: 8443, TargetPort: intstr.FromInt32(port)}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service %s: %v", name, err)
	}
}

// ep is one endpoint of a slice: a pod at an address, in a state.
type ep struct {
	pod, ip                     string
	ready, serving, terminating bool
}

func readyEP(pod, ip string) ep { return ep{pod: pod, ip: ip, ready: true, serving: true} }

// sliceFor builds the EndpointSlice name of service with endpoints on port.
func sliceFor(service, name string, port int32, eps ...ep) *discoveryv1.EndpointSlice {
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{
			discoveryv1.LabelServiceName: service,
			discoveryv1.LabelManagedBy:   "gridmesh-test",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("grpc"), Port: ptr(port), Protocol: ptr(corev1.ProtocolTCP)}},
	}
	for _, e := range eps {
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{e.ip},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(e.ready), Serving: ptr(e.serving), Terminating: ptr(e.terminating)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: e.pod},
		})
	}
	return sl
}

// applySlice creates or updates sl and returns when the API server has
// accepted it.
func (e *env) applySlice(ctx context.Context, t *testing.T, sl *discoveryv1.EndpointSlice) {
	t.Helper()
	c := e.admin.DiscoveryV1().EndpointSlices(ns)
	cur, err := c.Get(ctx, sl.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = c.Create(ctx, sl, metav1.CreateOptions{})
	case err == nil:
		sl.ResourceVersion = cur.ResourceVersion
		_, err = c.Update(ctx, sl, metav1.UpdateOptions{})
	}
	if err != nil {
		t.Fatalf("apply EndpointSlice %s: %v", sl.Name, err)
	}
}

// dial returns a TestService client for xds:///target made by mesh.Dial
// as caller (a SPIFFE ID from the env's CA).
func (e *env) dial(t *testing.T, target, caller string) testgrpc.TestServiceClient {
	t.Helper()
	ctx := testCtx(t, 10*time.Second)
	cc, err := mesh.Dial(ctx, "xds:///"+target, mesh.WithIdentity(devSource(t, e.ca, caller)), mesh.WithControlPlane(e.meshd.Addr),
		mesh.WithInsecurePlaintextControlPlaneForLocalDebugging(), mesh.WithGRPCDialOptions(grpc.WithContextDialer(podDialer)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return testgrpc.NewTestServiceClient(cc)
}

// call makes one UnaryCall and returns the serving backend's name.
func call(ctx context.Context, c testgrpc.TestServiceClient) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := c.UnaryCall(cctx, &testgrpc.SimpleRequest{})
	if err != nil {
		return "", err
	}
	return resp.GetServerId(), nil
}

// countCalls makes n calls and counts them per backend; a failed call
// fails the test.
func countCalls(ctx context.Context, t *testing.T, c testgrpc.TestServiceClient, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		id, err := call(ctx, c)
		if err != nil {
			t.Fatalf("call: %v", err)
		}
		got[id]++
	}
	return got
}

// waitServedBy polls with calls until every backend in want has served
// one.
func waitServedBy(ctx context.Context, t *testing.T, c testgrpc.TestServiceClient, want ...string) {
	t.Helper()
	seen := map[string]bool{}
	xdstest.WaitFor(ctx, t, fmt.Sprintf("calls reach %v", want), func() error {
		id, err := call(ctx, c)
		if err != nil {
			return err
		}
		seen[id] = true
		for _, w := range want {
			if !seen[w] {
				return fmt.Errorf("%s not reached yet (reached %v)", w, seen)
			}
		}
		return nil
	})
}

// waitNotServedBy polls with calls until a run of 50 calls in a row
// avoids every backend in gone, and returns how long after since that run
// began. The run must begin within a second of since: the API server
// accepting a change (the bounded deadline is the only wall-clock
// assertion; the propagation itself takes tens of milliseconds here).
func waitNotServedBy(ctx context.Context, t *testing.T, c testgrpc.TestServiceClient, since time.Time, gone ...string) time.Duration {
	t.Helper()
	run := 0
	var clean time.Time
	xdstest.WaitFor(ctx, t, fmt.Sprintf("calls avoid %v", gone), func() error {
		for run < 50 {
			id, err := call(ctx, c)
			if err != nil {
				return err
			}
			for _, g := range gone {
				if id == g {
					run = 0
					return fmt.Errorf("still served by %s", g)
				}
			}
			if run == 0 {
				clean = time.Now()
			}
			run++
		}
		return nil
	})
	took := clean.Sub(since)
	if took > time.Second {
		t.Errorf("calls still reached %v %v after the change was accepted, want under a second", gone, took)
	}
	return took
}

func ptr[T any](v T) *T { return &v }

// applyAt applies sl and returns when the API server accepted it.
func applyAt(ctx context.Context, t *testing.T, e *env, sl *discoveryv1.EndpointSlice) time.Time {
	t.Helper()
	e.applySlice(ctx, t, sl)
	return time.Now()
}
