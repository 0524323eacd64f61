package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/gridmesh/gridmesh/internal/testutil/kube"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
)

// TestServeKubernetes runs meshd serve -kubernetes on a real API server as
// a user with only the ClusterRole of deploy/kubernetes/meshd.yaml: it
// serves the Service with the endpoint's expected identity; as a user
// missing one permission it refuses to start, naming it.
func TestServeKubernetes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	api := kube.Start(t)
	admin := api.Client(t, api.Admin)
	role := manifestClusterRole(t)
	mustCreate(t, func() error {
		_, err := admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{})
		return err
	})
	bindRole(ctx, t, admin, "meshd", role.Name)
	seedService(ctx, t, admin)

	t.Run("read-only role", func(t *testing.T) {
		kc := kube.Kubeconfig(t, api.AddUser(t, "meshd"))
		cfg := filepath.Join(t.TempDir(), "meshd.yaml")
		if err := os.WriteFile(cfg, []byte("mtls: true\nservices: []\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := parseServeFlags([]string{"-kubernetes", "-kubeconfig", kc, "-trust-domain", "cluster.test", "-config", cfg,
			"-listen", "127.0.0.1:0", "-registration", "127.0.0.1:0", "-startup-grace", "0s", "-insecure-plaintext-xds-for-local-debugging"}, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		sctx, stop := context.WithCancel(ctx)
		addrs := make(chan string, 1)
		done := make(chan error, 1)
		go func() {
			done <- serve(sctx, f, slog.New(slog.NewTextHandler(io.Discard, nil)), nil, func(_, httpAddr string) { addrs <- httpAddr })
		}()
		var httpAddr string
		select {
		case httpAddr = <-addrs:
		case err := <-done:
			t.Fatalf("meshd serve -kubernetes: %v", err)
		}
		xdstest.WaitFor(ctx, t, "meshd serves trading.shop", func() error {
			body, err := get(ctx, "http://"+httpAddr+"/debug/config")
			if err != nil {
				return err
			}
			for _, want := range []string{`"trading.shop"`, "spiffe://cluster.test/ns/shop/sa/trading", "10.244.0.7"} {
				if !strings.Contains(body, want) {
					return errorf("/debug/config lacks %s", want)
				}
			}
			return nil
		})
		stop()
		if err := <-done; err != nil {
			t.Errorf("meshd serve returned %v after its context ended, want nil", err)
		}
	})

	t.Run("missing permission", func(t *testing.T) {
		partial := role.DeepCopy()
		partial.ObjectMeta = metav1.ObjectMeta{Name: "meshd-partial"}
		partial.Rules = []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
		}
		mustCreate(t, func() error {
			_, err := admin.RbacV1().ClusterRoles().Create(ctx, partial, metav1.CreateOptions{})
			return err
		})
		bindRole(ctx, t, admin, "meshd-partial", partial.Name)
		kc := kube.Kubeconfig(t, api.AddUser(t, "meshd-partial"))
		err := runServe(ctx, []string{"-kubernetes", "-kubeconfig", kc, "-trust-domain", "cluster.test", "-listen", "127.0.0.1:0", "-log-level", "error", "-insecure-plaintext-xds-for-local-debugging"})
		want := `controlplane: kubernetes: user "meshd-partial" may not watch pods in all namespaces; meshd needs list and watch on services, endpointslices.discovery.k8s.io and pods: bind it to the ClusterRole in deploy/kubernetes/meshd.yaml`
		if err == nil || err.Error() != want {
			t.Errorf("meshd serve as meshd-partial: %v\nwant: %s", err, want)
		}
	})
}

// manifestClusterRole is the ClusterRole of deploy/kubernetes/meshd.yaml.
func manifestClusterRole(t *testing.T) *rbacv1.ClusterRole {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "kubernetes", "meshd.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme.Scheme, scheme.Scheme, json.SerializerOptions{Yaml: true, Strict: true})
	for _, doc := range strings.Split(string(data), "\n---\n") {
		if !strings.Contains(doc, "kind: ClusterRole\n") {
			continue
		}
		obj, _, err := dec.Decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return obj.(*rbacv1.ClusterRole)
	}
	t.Fatal("deploy/kubernetes/meshd.yaml has no ClusterRole")
	return nil
}

func bindRole(ctx context.Context, t *testing.T, c kubernetes.Interface, user, role string) {
	t.Helper()
	mustCreate(t, func() error {
		_, err := c.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: user},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
		}, metav1.CreateOptions{})
		return err
	})
}

// seedService creates Service shop/trading with one ready endpoint whose
// pod runs under service account trading.
func seedService(ctx context.Context, t *testing.T, c kubernetes.Interface) {
	t.Helper()
	mustCreate(t, func() error {
		_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{})
		return err
	})
	mustCreate(t, func() error {
		_, err := c.CoreV1().Pods("shop").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "trading-1"},
			Spec:       corev1.PodSpec{ServiceAccountName: "trading", Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}}},
		}, metav1.CreateOptions{})
		return err
	})
	mustCreate(t, func() error {
		_, err := c.CoreV1().Services("shop").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "trading"},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "grpc", Port: 8443}}},
		}, metav1.CreateOptions{})
		return err
	})
	port, ready := int32(8443), true
	name := "grpc"
	mustCreate(t, func() error {
		_, err := c.DiscoveryV1().EndpointSlices("shop").Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "trading-1", Labels: map[string]string{discoveryv1.LabelServiceName: "trading"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
			Endpoints: []discoveryv1.Endpoint{{
				Addresses:  []string{"10.244.0.7"},
				Conditions: discoveryv1.EndpointConditions{Ready: &ready},
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: "trading-1"},
			}},
		}, metav1.CreateOptions{})
		return err
	})
}

func mustCreate(t *testing.T, create func() error) {
	t.Helper()
	if err := create(); err != nil {
		t.Fatal(err)
	}
}

func get(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func errorf(format string, args ...any) error {
	return fmt.Errorf(format, args...)
}
