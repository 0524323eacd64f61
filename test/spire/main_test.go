// Package spire_test runs gridmesh against a real SPIRE server and agent
// (internal/testutil/spire). The binaries come from tools/spire/build.sh;
// GRIDMESH_SKIP_SPIRE=1 skips these tests where they cannot be built.
package spire_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/goleak"
)

// helperEnv, when set in the environment, turns the test binary into a
// workload that asks the Workload API for an X.509-SVID and reports what it
// got: the tests run it under another uid to play an unregistered workload.
const helperEnv = "GRIDMESH_SPIRE_HELPER_TIMEOUT"

func TestMain(m *testing.M) {
	if timeout := os.Getenv(helperEnv); timeout != "" {
		os.Exit(fetchSVIDHelper(timeout))
	}
	goleak.VerifyTestMain(m)
}

// fetchSVIDHelper prints "ID <spiffe id>" and returns 0 when the workload gets
// an SVID within timeout from SPIFFE_ENDPOINT_SOCKET, else prints "ERR <error>"
// and returns 3.
func fetchSVIDHelper(timeout string) int {
	d, err := time.ParseDuration(timeout)
	if err != nil {
		fmt.Printf("ERR bad %s: %v\n", helperEnv, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx)
	if err != nil {
		fmt.Printf("ERR %v\n", err)
		return 3
	}
	defer src.Close()
	svid, err := src.GetX509SVID()
	if err != nil {
		fmt.Printf("ERR %v\n", err)
		return 3
	}
	fmt.Printf("ID %s\n", svid.ID)
	return 0
}
