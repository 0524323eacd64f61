package kubernetes_test

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"text/template"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/gridmesh/gridmesh/controlplane"
)

// clusterSPIFFEID is spire-controller-manager's ClusterSPIFFEID
// (spire.spiffe.io/v1alpha1) as its API documents it, for a strict decode
// of the example: the test does not install its CRD (parsing only).
type clusterSPIFFEID struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		SPIFFEIDTemplate          string                `json:"spiffeIDTemplate"`
		TTL                       *metav1.Duration      `json:"ttl,omitempty"`
		JWTTTL                    *metav1.Duration      `json:"jwtTtl,omitempty"`
		DNSNameTemplates          []string              `json:"dnsNameTemplates,omitempty"`
		WorkloadSelectorTemplates []string              `json:"workloadSelectorTemplates,omitempty"`
		FederatesWith             []string              `json:"federatesWith,omitempty"`
		NamespaceSelector         *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
		PodSelector               *metav1.LabelSelector `json:"podSelector,omitempty"`
		Admin                     bool                  `json:"admin,omitempty"`
		Downstream                bool                  `json:"downstream,omitempty"`
		AutoPopulateDNSNames      bool                  `json:"autoPopulateDNSNames,omitempty"`
		ClassName                 string                `json:"className,omitempty"`
		Fallback                  bool                  `json:"fallback,omitempty"`
		Hint                      string                `json:"hint,omitempty"`
	} `json:"spec"`
}

// TestDeployManifests decodes deploy/kubernetes/*.yaml strictly, applies
// every object client-go knows to the API server (the API server
// validates them), and checks what meshd depends on: two meshd replicas
// running meshd serve -kubernetes under a service account the ClusterRole
// is bound to (meshd's permission check passes as that account); the
// workload's Service policy annotation parses; and the ClusterSPIFFEID
// (parsed only: its CRD is spire-controller-manager's and is not
// installed here) selects the workload's pods and renders, for them, the
// SPIFFE ID meshd expects of their endpoints.
func TestDeployManifests(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	api := startAPIOnly(t)
	c, err := client.New(api.Admin, client.Options{Scheme: scheme.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	var (
		deployments []*appsv1.Deployment
		services    []*corev1.Service
		spiffeIDs   []*unknownObject
	)
	for _, file := range []string{"meshd.yaml", "workload.yaml"} {
		for _, o := range decodeManifest(t, filepath.Join(manifestDir, file)) {
			switch v := o.(type) {
			case *unknownObject:
				spiffeIDs = append(spiffeIDs, v)
				continue
			case *appsv1.Deployment:
				deployments = append(deployments, v)
			case *corev1.Service:
				services = append(services, v)
			}
			if err := c.Create(ctx, o.(client.Object)); err != nil {
				t.Fatalf("%s: apply %T %s: %v", file, o, o.(client.Object).GetName(), err)
			}
		}
	}

	// meshd: two replicas of meshd serve -kubernetes as service account meshd.
	meshd := find(t, deployments, "meshd")
	if r := meshd.Spec.Replicas; r == nil || *r != 2 {
		t.Errorf("meshd Deployment has %v replicas, want 2", r)
	}
	args := meshd.Spec.Template.Spec.Containers[0].Args
	if !slices.Contains(args, "-kubernetes") || !slices.Contains(args, "serve") {
		t.Errorf("meshd runs %v, want meshd serve -kubernetes", args)
	}
	sa := "system:serviceaccount:" + meshd.Namespace + ":" + meshd.Spec.Template.Spec.ServiceAccountName
	asMeshd := rest.CopyConfig(api.Admin)
	asMeshd.Impersonate = rest.ImpersonationConfig{UserName: sa, Groups: []string{"system:serviceaccounts", "system:authenticated"}}
	s := controlplane.NewServer()
	defer s.Close()
	src, err := controlplane.NewKubernetesSource(ctx, api.Client(t, asMeshd), s, controlplane.KubernetesConfig{TrustDomain: "example.org"})
	if err != nil {
		t.Fatalf("meshd as %s: %v", sa, err)
	}
	src.Close()

	// The workload: its policy annotation parses; its pods get the
	// ClusterSPIFFEID's ID, the one meshd expects of them.
	trading := find(t, deployments, "trading-v1")
	// Both meshd replicas list it from its EndpointSlice; registering with
	// one of them (in that replica's memory) would make them disagree.
	if args := trading.Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, "-endpoints-from-platform") {
		t.Errorf("trading runs with %v, want -endpoints-from-platform (mesh.WithoutControlPlaneRegistration)", args)
	}
	svc := find(t, services, "trading")
	if _, err := controlplane.ParsePolicyAnnotation("workload.yaml", "trading.shop", svc.Annotations[controlplane.PolicyAnnotation]); err != nil {
		t.Errorf("workload.yaml: %v", err)
	}
	if len(spiffeIDs) != 1 || spiffeIDs[0].gvk != "spire.spiffe.io/v1alpha1, Kind=ClusterSPIFFEID" {
		t.Fatalf("manifests hold %d objects of kinds client-go does not know, want one ClusterSPIFFEID", len(spiffeIDs))
	}
	var cs clusterSPIFFEID
	js, err := yaml.YAMLToJSON(spiffeIDs[0].doc)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cs); err != nil {
		t.Fatalf("ClusterSPIFFEID: %v", err)
	}
	sel, err := metav1.LabelSelectorAsSelector(cs.Spec.PodSelector)
	if err != nil {
		t.Fatal(err)
	}
	pod := trading.Spec.Template
	if !sel.Matches(labels.Set(pod.Labels)) {
		t.Errorf("the ClusterSPIFFEID's podSelector %v does not select the trading pods (labels %v)", sel, pod.Labels)
	}
	tmpl, err := template.New("id").Option("missingkey=error").Parse(cs.Spec.SPIFFEIDTemplate)
	if err != nil {
		t.Fatal(err)
	}
	var id strings.Builder
	err = tmpl.Execute(&id, map[string]any{
		"TrustDomain": "example.org",
		"PodMeta":     metav1.ObjectMeta{Name: "trading-v1-abc", Namespace: trading.Namespace, Labels: pod.Labels},
		"PodSpec":     pod.Spec,
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://example.org/ns/shop/sa/trading"; id.String() != want {
		t.Errorf("the ClusterSPIFFEID gives the trading pods %s, meshd expects %s", id.String(), want)
	}
	if !slices.Contains(args, "-trust-domain=example.org") {
		t.Errorf("meshd runs %v, want -trust-domain=example.org, the workload example's", args)
	}
}

func find[T interface{ GetName() string }](t *testing.T, objs []T, name string) T {
	t.Helper()
	for _, o := range objs {
		if o.GetName() == name {
			return o
		}
	}
	var zero T
	t.Fatalf("no %T named %s in the manifests", zero, name)
	return zero
}
