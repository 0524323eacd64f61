package controlplane_test

import (
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gridmesh/gridmesh/controlplane/registration"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
)

func cmpDiff(want, got any, opts ...cmp.Option) string { return cmp.Diff(want, got, opts...) }

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	// Write then rename, as editors and ConfigMaps do, so the watcher never
	// reads half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func registrationClient(m *xdstest.Meshd) *registration.Client {
	return registration.NewClient(m.HTTPAddr)
}

func registrationFor(service, addr string, ttl time.Duration) registration.Registration {
	return registration.Registration{Service: service, Address: addr, TTL: registration.Duration(ttl)}
}
