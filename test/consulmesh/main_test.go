// Package consulmesh_test runs the mesh on a real Consul agent
// (internal/testutil/consul) as identity provider and intention store:
// services take their SVIDs from Consul's Connect CA
// (security.ConsulSource) and authorize calls by Consul intentions, L4 and
// L7, for gRPC and HTTP.
package consulmesh_test

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
