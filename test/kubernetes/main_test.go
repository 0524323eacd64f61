// Package kubernetes_test runs meshd on a real Kubernetes API server
// (internal/testutil/kube: kube-apiserver v1.37.2 and etcd v3.7.3, built by
// tools/kube-apiserver/build.sh and tools/etcd/build.sh): Services,
// EndpointSlices and Pods are the source of truth for services, endpoints
// and identities (controlplane.KubernetesSource). No kubelet runs: the
// EndpointSlices point at meshed servers the tests start on loopback
// addresses of their own, standing in for pods.
package kubernetes_test

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
