package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/gridmesh/gridmesh/controlplane"
)

// kubeFlags are meshd serve's Kubernetes flags.
type kubeFlags struct {
	enabled      bool
	kubeconfig   string
	namespaces   string
	trustDomain  string
	versionLabel string
	syncTimeout  time.Duration
}

func (k *kubeFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&k.enabled, "kubernetes", false, "read services, endpoints and identities from the Kubernetes API: each Service becomes xds:///<service>.<namespace>, its ready EndpointSlice endpoints its endpoints, each expected to present spiffe://<trust-domain>/ns/<namespace>/sa/<its pod's service account>; policy from the gridmesh.io/policy annotation. Needs list and watch on services, endpointslices and pods (deploy/kubernetes/meshd.yaml)")
	fs.StringVar(&k.kubeconfig, "kubeconfig", "", "with -kubernetes: kubeconfig file to reach the API server with; empty: the in-cluster config (the pod's service account)")
	fs.StringVar(&k.namespaces, "kubernetes-namespaces", "", "with -kubernetes: comma-separated namespaces whose Services to serve; empty: all")
	fs.StringVar(&k.trustDomain, "trust-domain", "", "with -kubernetes: the SPIFFE trust domain of the workloads' identities (your SPIRE server's); required with -kubernetes")
	fs.StringVar(&k.versionLabel, "kubernetes-version-label", "version", "with -kubernetes: the pod label that puts an endpoint in a version of its service")
	fs.DurationVar(&k.syncTimeout, "kubernetes-sync-timeout", time.Minute, "with -kubernetes: how long to wait at start for the first list of Services, EndpointSlices and Pods before giving up")
}

// check refuses Kubernetes flags that cannot work.
func (k *kubeFlags) check(fs *flag.FlagSet) error {
	if !k.enabled {
		var set []string
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "kubeconfig" || f.Name == "trust-domain" || strings.HasPrefix(f.Name, "kubernetes-") {
				set = append(set, "-"+f.Name)
			}
		})
		if len(set) > 0 {
			return fmt.Errorf("%s only apply with -kubernetes; add -kubernetes or remove them", strings.Join(set, ", "))
		}
		return nil
	}
	if k.trustDomain == "" {
		return errors.New("-kubernetes needs -trust-domain: the trust domain of your workloads' SPIFFE IDs (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>), your SPIRE server's")
	}
	return nil
}

// startKubernetes starts the Kubernetes source feeding s, when -kubernetes
// is set. It blocks until the first Services, EndpointSlices and Pods are
// read, and fails at once naming any permission meshd lacks. stop ends it.
func startKubernetes(ctx context.Context, k kubeFlags, s *controlplane.Server, logger *slog.Logger) (stop func(), err error) {
	if !k.enabled {
		return func() {}, nil
	}
	// client-go logs through klog; send it to meshd's log.
	klog.SetSlogLogger(logger.With("component", "client-go"))
	var cfg *rest.Config
	if k.kubeconfig != "" {
		if cfg, err = clientcmd.BuildConfigFromFlags("", k.kubeconfig); err != nil {
			return nil, fmt.Errorf("-kubeconfig %q: %w", k.kubeconfig, err)
		}
	} else if cfg, err = rest.InClusterConfig(); err != nil {
		return nil, fmt.Errorf("-kubernetes without -kubeconfig reads the in-cluster config, which is missing (%w); run meshd in a pod, or give -kubeconfig", err)
	}
	cfg.UserAgent = "meshd"
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	client, err := kubernetes.NewForConfigAndClient(cfg, hc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	var nss []string
	for _, n := range strings.Split(k.namespaces, ",") {
		if n = strings.TrimSpace(n); n != "" {
			nss = append(nss, n)
		}
	}
	sctx, cancel := context.WithTimeout(ctx, k.syncTimeout)
	defer cancel()
	src, err := controlplane.NewKubernetesSource(sctx, client, s, controlplane.KubernetesConfig{
		TrustDomain: k.trustDomain, Namespaces: nss, VersionLabel: k.versionLabel,
	})
	if err != nil {
		hc.CloseIdleConnections()
		return nil, err
	}
	st := src.Stats()
	logger.Info("reading services from Kubernetes", "api", cfg.Host, "namespaces", nss, "services", st.Services, "endpoints", st.Endpoints)
	return func() {
		_ = src.Close()
		hc.CloseIdleConnections()
	}, nil
}
