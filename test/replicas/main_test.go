// Package replicas_test runs meshd replicas as processes over one real
// Consul agent, with mesh servers and clients naming every replica: the
// replicas share registrations through the Consul catalog and serve
// identical snapshots, and a client whose replica is killed moves to
// another without a failed call.
package replicas_test

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
