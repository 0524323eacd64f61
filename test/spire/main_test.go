// Package spire_test runs gridmesh against a real SPIRE server and agent
// (internal/testutil/spire). The binaries come from tools/spire/build.sh;
// GRIDMESH_SKIP_SPIRE=1 skips these tests where they cannot be built.
package spire_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/goleak"

	"github.com/gridmesh/gridmesh/security"
)

// helperEnv, when set in the environment, turns the test binary into a
// workload that asks the Workload API for an X.509-SVID and reports what it
// got: the tests run it under another uid to play an unregistered workload.
// helperAPIEnv picks the client: "go-spiffe" (workloadapi.NewX509Source) or
// "mesh" (security.NewWorkloadAPISource).
const (
	helperEnv    = "GRIDMESH_SPIRE_HELPER_TIMEOUT"
	helperAPIEnv = "GRIDMESH_SPIRE_HELPER_API"
)

func TestMain(m *testing.M) {
	if timeout := os.Getenv(helperEnv); timeout != "" {
		os.Exit(fetchSVIDHelper(timeout, os.Getenv(helperAPIEnv)))
	}
	// The long tests here mostly wait (on rotations, outages, a minute of
	// calls), each against its own SPIRE pair: run them side by side rather
	// than GOMAXPROCS at a time, unless -parallel is given.
	flag.Parse()
	parallelSet := false
	flag.Visit(func(f *flag.Flag) { parallelSet = parallelSet || f.Name == "test.parallel" })
	if !parallelSet {
		_ = flag.Set("test.parallel", "8")
	}
	goleak.VerifyTestMain(m)
}

// fetchSVIDHelper prints "ID <spiffe id>" and returns 0 when the workload gets
// an SVID within timeout from SPIFFE_ENDPOINT_SOCKET, else prints "ERR <error>"
// and returns 3.
func fetchSVIDHelper(timeout, api string) int {
	d, err := time.ParseDuration(timeout)
	if err != nil {
		fmt.Printf("ERR bad %s: %v\n", helperEnv, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var src interface {
		Close() error
	}
	var getID func() (string, error)
	switch api {
	case "mesh":
		s, err := security.NewWorkloadAPISource(ctx, security.WorkloadAPIConfig{})
		if err != nil {
			fmt.Printf("ERR %v\n", err)
			return 3
		}
		src = s
		getID = func() (string, error) {
			id, err := security.ID(s)
			return id.String(), err
		}
	default:
		s, err := workloadapi.NewX509Source(ctx)
		if err != nil {
			fmt.Printf("ERR %v\n", err)
			return 3
		}
		src = s
		getID = func() (string, error) {
			svid, err := s.GetX509SVID()
			if err != nil {
				return "", err
			}
			return svid.ID.String(), nil
		}
	}
	defer src.Close()
	id, err := getID()
	if err != nil {
		fmt.Printf("ERR %v\n", err)
		return 3
	}
	fmt.Printf("ID %s\n", id)
	return 0
}
