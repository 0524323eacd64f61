// Package kube runs a real Kubernetes API server (kube-apiserver v1.37.2 on
// etcd v3.7.3) on loopback for tests, through controller-runtime's envtest:
// one etcd and one kube-apiserver per [Start], on free ports, with
// RBAC on and client-certificate users. No kubelet, scheduler or
// controller manager runs: tests create Pods and EndpointSlices themselves
// (the EndpointSlice controller would fill them from pods no kubelet runs).
//
// The binaries are not built here: tools/kube-apiserver/build.sh and
// tools/etcd/build.sh build them once into caches outside the repository
// (about 6 minutes and 1 minute the first time) and later runs reuse them.
// KUBEBUILDER_ASSETS, as envtest reads it, names one directory holding
// both instead. A test that calls [Start] without them fails with a
// message naming the scripts.
//
//	a := kube.Start(t)
//	client := a.Client(t, a.Admin) // a kubernetes.Interface
//	restricted := a.AddUser(t, "meshd") // a rest.Config for a user with no rights yet
//
// Outages: [APIServer.StopAPIServer] stops kube-apiserver (SIGTERM; etcd
// keeps running), [APIServer.StartAPIServer] starts it again on the same
// port with the same certificates, so clients reconnect.
package kube

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

// Version is the Kubernetes release tools/kube-apiserver/build.sh builds,
// and EtcdVersion the etcd release tools/etcd/build.sh builds.
const (
	Version     = "v1.37.2"
	EtcdVersion = "v3.7.3"
)

// startTimeout bounds each start of etcd or kube-apiserver. Generous: the
// machines that run these tests have two shared cores.
const startTimeout = 90 * time.Second

// stopTimeout is how long kube-apiserver gets after SIGTERM before
// SIGKILL. On SIGTERM it waits for open watches to end, up to a minute: a
// client still watching holds it that long.
const stopTimeout = 5 * time.Second

// killedAfterTimeout says whether err is envtest's report that a process
// did not stop within stopTimeout and was killed.
func killedAfterTimeout(err error) bool {
	return strings.Contains(err.Error(), "timeout waiting for process kube-apiserver to stop")
}

func init() {
	// envtest logs through controller-runtime's logger, which otherwise
	// prints a warning with a stack trace that it was never set.
	ctrllog.SetLogger(logr.Discard())
}

// Binaries returns the paths of kube-apiserver and etcd, or an error that
// says how to build them. KUBEBUILDER_ASSETS, when set, is a directory
// holding both; otherwise they come from the build scripts' caches
// ($GRIDMESH_KUBE_APISERVER_DIR and $GRIDMESH_ETCD_DIR override them).
func Binaries() (apiserver, etcd string, err error) {
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		apiserver, etcd = filepath.Join(dir, "kube-apiserver"), filepath.Join(dir, "etcd")
		for _, b := range []string{apiserver, etcd} {
			if _, err := os.Stat(b); err != nil {
				return "", "", fmt.Errorf("kube: KUBEBUILDER_ASSETS=%s: %w", dir, err)
			}
		}
		return apiserver, etcd, nil
	}
	apiserver, err = cached("kube-apiserver", Version, "GRIDMESH_KUBE_APISERVER_DIR", "tools/kube-apiserver/build.sh", "about 6 minutes")
	if err != nil {
		return "", "", err
	}
	etcd, err = cached("etcd", EtcdVersion, "GRIDMESH_ETCD_DIR", "tools/etcd/build.sh", "about a minute")
	if err != nil {
		return "", "", err
	}
	return apiserver, etcd, nil
}

// cached finds the binary name that script built into its cache.
func cached(name, version, dirEnv, script, takes string) (string, error) {
	dir := os.Getenv(dirEnv)
	if dir == "" {
		cache := os.Getenv("XDG_CACHE_HOME")
		if cache == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return "", fmt.Errorf("kube: no cache dir: %w", err)
			}
			cache = filepath.Join(home, ".cache")
		}
		dir = filepath.Join(cache, "gridmesh", name+"-"+version)
	}
	bin := filepath.Join(dir, name)
	stamp, serr := os.ReadFile(filepath.Join(dir, "stamp"))
	if _, err := os.Stat(bin); err != nil || serr != nil {
		return "", fmt.Errorf("kube: %s %s not found in %s: run `bash %s` from the repository root (%s the first time, then cached), or set KUBEBUILDER_ASSETS to a directory holding kube-apiserver and etcd", name, version, dir, script, takes)
	}
	if !strings.HasPrefix(string(stamp), name+" "+version+" ") {
		return "", fmt.Errorf("kube: the binary in %s is %q, want %s %s: run `bash %s`", dir, strings.TrimSpace(string(stamp)), name, version, script)
	}
	return bin, nil
}

// APIServer is a running etcd and kube-apiserver. Its methods take the
// testing.TB of the calling test and fail it on error; call them from the
// test goroutine.
type APIServer struct {
	// Admin is a rest.Config for a user in system:masters.
	Admin *rest.Config
	// URL is the API server's https address.
	URL string

	env     *envtest.Environment
	logPath string

	mu         sync.Mutex
	transports []*http.Client
}

// Start starts etcd and kube-apiserver on 127.0.0.1 and blocks until the
// API server serves (3 to 4 seconds on an idle machine). kube-apiserver
// runs with --advertise-address=127.0.0.1 and
// --endpoint-reconciler-type=none (nothing reaches out of loopback), RBAC
// authorization and client-certificate authentication. Both are stopped in
// t.Cleanup; their output goes to a file whose tail is logged if the test
// failed.
func Start(t testing.TB) *APIServer {
	t.Helper()
	apiserverBin, etcdBin, err := Binaries()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	logPath := filepath.Join(dir, "control-plane.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	api := &envtest.APIServer{Path: apiserverBin, CertDir: filepath.Join(dir, "apiserver"), Out: logf, Err: logf}
	if err := os.Mkdir(api.CertDir, 0o700); err != nil {
		t.Fatal(err)
	}
	api.Configure().
		Set("advertise-address", "127.0.0.1").
		Set("endpoint-reconciler-type", "none")
	env := &envtest.Environment{
		ControlPlane: envtest.ControlPlane{
			APIServer: api,
			Etcd:      &envtest.Etcd{Path: etcdBin, DataDir: filepath.Join(dir, "etcd"), Out: logf, Err: logf},
		},
		ControlPlaneStartTimeout: startTimeout,
		ControlPlaneStopTimeout:  stopTimeout,
	}
	a := &APIServer{env: env, logPath: logPath}
	t.Cleanup(func() {
		a.closeClients()
		if err := env.Stop(); err != nil && !killedAfterTimeout(err) {
			t.Errorf("kube: stop the control plane: %v", err)
		}
		logf.Close()
		if t.Failed() {
			a.logTail(t)
		}
	})
	cfg, err := env.Start()
	if err != nil {
		a.logTail(t)
		t.Fatalf("kube: start etcd and kube-apiserver: %v", err)
	}
	a.Admin = cfg
	a.URL = cfg.Host
	return a
}

func (a *APIServer) logTail(t testing.TB) {
	data, err := os.ReadFile(a.logPath)
	if err != nil {
		return
	}
	if len(data) > 8<<10 {
		data = data[len(data)-8<<10:]
	}
	t.Logf("kube: last lines of the control plane's output:\n%s", data)
}

// AddUser returns a rest.Config for a user authenticated by a client
// certificate, in groups besides system:authenticated. The user has no
// rights until a test binds a role to it (RBAC).
func (a *APIServer) AddUser(t testing.TB, name string, groups ...string) *rest.Config {
	t.Helper()
	u, err := a.env.AddUser(envtest.User{Name: name, Groups: groups}, &rest.Config{QPS: 1000, Burst: 2000})
	if err != nil {
		t.Fatalf("kube: add user %s: %v", name, err)
	}
	return u.Config()
}

// Client returns a clientset for cfg whose connections are closed at
// cleanup.
func (a *APIServer) Client(t testing.TB, cfg *rest.Config) kubernetes.Interface {
	t.Helper()
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kubernetes.NewForConfigAndClient(cfg, hc)
	if err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	a.transports = append(a.transports, hc)
	a.mu.Unlock()
	t.Cleanup(hc.CloseIdleConnections)
	return c
}

func (a *APIServer) closeClients() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, hc := range a.transports {
		hc.CloseIdleConnections()
	}
}

// Kubeconfig writes cfg as a kubeconfig file and returns its path.
func Kubeconfig(t testing.TB, cfg *rest.Config) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	kc.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// StopAPIServer stops kube-apiserver (SIGTERM, then SIGKILL after 5s: with
// clients watching it would take up to a minute); etcd keeps running, with
// everything stored.
func (a *APIServer) StopAPIServer(t testing.TB) {
	t.Helper()
	if err := a.env.ControlPlane.APIServer.Stop(); err != nil && !killedAfterTimeout(err) {
		t.Fatalf("kube: stop kube-apiserver: %v", err)
	}
}

// StartAPIServer starts kube-apiserver again after StopAPIServer, on the
// same address with the same certificates, and blocks until it serves. A
// killed server's port may be held for a moment: it retries for up to a
// minute.
func (a *APIServer) StartAPIServer(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		err := a.env.ControlPlane.APIServer.Start()
		if err == nil {
			return
		}
		if errors.Is(err, os.ErrNotExist) || time.Now().After(deadline) {
			a.logTail(t)
			t.Fatalf("kube: start kube-apiserver again: %v", err)
		}
		_ = a.env.ControlPlane.APIServer.Stop()
		time.Sleep(200 * time.Millisecond) // the old process's port, bounded by the deadline
	}
}
