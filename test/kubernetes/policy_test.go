package kubernetes_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gridmesh/gridmesh/controlplane"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
)

func TestParsePolicyAnnotation(t *testing.T) {
	const where = "kubernetes Service shop/trading annotation gridmesh.io/policy"
	tests := []struct {
		name, value string
		want        *controlplane.Service
		wantErr     string
	}{
		{name: "split between versions", value: "versions: [{name: v1}, {name: v2}]\nroutes:\n  - split: [{version: v1, weight: 9}, {version: v2, weight: 1}]\nlb: least_request\ntimeout: 2s",
			want: &controlplane.Service{Name: "trading.shop", LB: "least_request", Timeout: 2 * time.Second,
				Versions: []controlplane.Version{{Name: "v1"}, {Name: "v2"}},
				Routes:   []controlplane.Route{{Split: []controlplane.WeightedVersion{{Version: "v1", Weight: 9}, {Version: "v2", Weight: 1}}}}}},
		{name: "too many attempts", value: "retry: {attempts: 11}\n",
			wantErr: "controlplane: " + where + " refused: line 1: retry.attempts: 11 is too many; grpc-go caps attempts at 5 and meshd refuses more than 10"},
		{name: "unknown key", value: "retries: {attempts: 2}",
			wantErr: "controlplane: " + where + ` refused: line 1: retries: unknown key "retries"; the keys here are name, port, spiffe_id, lb, hash_header, endpoints, versions, routes, timeout, retry, circuit_breaker, outlier_detection, authorization`},
		{name: "undeclared version", value: "routes:\n  - version: v3\n",
			wantErr: "controlplane: " + where + ` refused: line 2: routes[0].version: "v3" is not a version of this service; declare it under versions`},
		{name: "endpoints are Kubernetes'", value: "endpoints: [10.0.0.1:8443]\nversions: [{name: v1, endpoints: [10.0.0.2:8443]}]\n",
			wantErr: "controlplane: " + where + " refused: line 1: endpoints: set by Kubernetes, not by the annotation (endpoints come from the Service's EndpointSlices); remove it; " +
				"line 2: versions[0].endpoints: set by Kubernetes, not by the annotation (an endpoint's version is its pod's version label); remove it"},
		{name: "empty", value: " \n",
			wantErr: "controlplane: " + where + " refused: line 1: empty; write the policy as YAML (lb: least_request), or remove the annotation for default settings"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := controlplane.ParsePolicyAnnotation(where, "trading.shop", tt.value)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("error:\n%v\nwant:\n%s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("policy (-want +got):\n%s", diff)
			}
		})
	}
}

// TestPolicyAnnotation: a Service's gridmesh.io/policy annotation routes
// calls between versions (pod label version) and says who may call; a bad
// annotation is refused and the last good policy stays; a fixed one
// applies.
func TestPolicyAnnotation(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	e := startEnv(t)
	ws := e.startWorkloads(t, []string{"v1", "v2"}, []string{"10.244.0.41", "10.244.0.42"},
		[]string{saID(ns, "trading"), saID(ns, "trading")})
	e.createPod(ctx, t, "p1", "trading", map[string]string{"version": "v1"})
	e.createPod(ctx, t, "p2", "trading", map[string]string{"version": "v2"})
	port := ws[0].port
	policy := func(v1, v2 int) map[string]string {
		return map[string]string{controlplane.PolicyAnnotation: fmt.Sprintf(`versions: [{name: v1}, {name: v2}]
routes:
  - split: [{version: v1, weight: %d}, {version: v2, weight: %d}]
authorization:
  - sources: ["%s"]
`, v1, v2, saID(ns, "frontend"))}
	}
	e.createService(ctx, t, "trading", port, policy(0, 1))
	e.applySlice(ctx, t, sliceFor("trading", "trading-1", port, readyEP("p1", "10.244.0.41"), readyEP("p2", "10.244.0.42")))

	c := e.dial(t, "trading.shop", saID(ns, "frontend"))
	waitServedBy(ctx, t, c, "v2")
	if got := countCalls(ctx, t, c, 100); got["v2"] != 100 {
		t.Errorf("calls %v, want all 100 on v2 (split v1:0 v2:1)", got)
	}
	other := e.dial(t, "trading.shop", saID(ns, "other"))
	if _, err := call(ctx, other); status.Code(err) != codes.PermissionDenied {
		t.Errorf("call as another service account: %v, want PermissionDenied", err)
	}

	// A bad annotation is refused; the last good policy stays.
	rejections := e.meshd.Stats().Rejections
	annotate(ctx, t, e, map[string]string{controlplane.PolicyAnnotation: "retry: {attempts: 11}\n"})
	xdstest.WaitFor(ctx, t, "bad annotation refused", func() error {
		if e.meshd.Stats().Rejections == rejections {
			return errors.New("not refused yet")
		}
		return nil
	})
	if got := countCalls(ctx, t, c, 100); got["v2"] != 100 {
		t.Errorf("after a bad annotation: calls %v, want all 100 still on v2", got)
	}
	if _, err := call(ctx, other); status.Code(err) != codes.PermissionDenied {
		t.Errorf("after a bad annotation, call as another service account: %v, want PermissionDenied still", err)
	}

	// A good one applies.
	annotate(ctx, t, e, policy(1, 0))
	waitServedBy(ctx, t, c, "v1")
	waitNotServedBy(ctx, t, c, time.Now(), "v2")

	// A Service whose policy was never good is left out of the mesh, not
	// served without its authorization; fixed, it is served.
	rejections = e.meshd.Stats().Rejections
	e.createService(ctx, t, "accounts", port, map[string]string{controlplane.PolicyAnnotation: "authorization: [{sources: [\"spiffe://cluster.test/ns/shop/sa/*\"]}]\nlb: fastest\n"})
	xdstest.WaitFor(ctx, t, "accounts' bad policy refused", func() error {
		if e.meshd.Stats().Rejections == rejections {
			return errors.New("not refused yet")
		}
		return nil
	})
	if hasListener(e, "accounts.shop") {
		t.Error("accounts.shop is served though its policy was never good")
	}
	svc, err := e.admin.CoreV1().Services(ns).Get(ctx, "accounts", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Annotations[controlplane.PolicyAnnotation] = "authorization: [{sources: [\"spiffe://cluster.test/ns/shop/sa/*\"]}]\n"
	if _, err := e.admin.CoreV1().Services(ns).Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	xdstest.WaitFor(ctx, t, "accounts.shop served once its policy is fixed", func() error {
		if !hasListener(e, "accounts.shop") {
			return errors.New("not served yet")
		}
		return nil
	})
}

// hasListener says whether meshd serves the client listener of service.
func hasListener(e *env, service string) bool {
	sn := e.meshd.Snapshot()
	if sn == nil {
		return false
	}
	for _, l := range sn.Listeners {
		if l.GetName() == service {
			return true
		}
	}
	return false
}

func annotate(ctx context.Context, t *testing.T, e *env, annotations map[string]string) {
	t.Helper()
	svc, err := e.admin.CoreV1().Services(ns).Get(ctx, "trading", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Annotations = annotations
	if _, err := e.admin.CoreV1().Services(ns).Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}
