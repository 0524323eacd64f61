package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gridmesh/gridmesh/examples/rec/load"
	"github.com/gridmesh/gridmesh/examples/rec/platform"
)

// auditAndSweep audits the platform after a load run (platform.Audit) and
// sweeps the authorization matrix (Platform.SweepAuthz), logs the report
// and fails t on every check that does not hold and every pair answered
// against the matrix. It returns the report and the swept pairs.
func auditAndSweep(ctx context.Context, t *testing.T, p *platform.Platform, op *platform.Operator, seed platform.Seed, res *load.Result) (*platform.Report, []platform.Pair) {
	t.Helper()
	actx, acancel := context.WithTimeout(ctx, 2*time.Minute)
	defer acancel()
	report, err := platform.Audit(actx, op, seed, res.Acks, res.Unknown)
	if err != nil {
		t.Fatal(err)
	}
	pairs, err := p.SweepAuthz(actx)
	if err != nil {
		t.Fatal(err)
	}
	report.Checks = append(report.Checks, platform.AuthzCheck(pairs))
	var b strings.Builder
	report.Print(&b)
	t.Logf("audit:\n%s", b.String())
	for _, c := range report.Checks {
		if !c.OK {
			t.Errorf("%s: %s", c.Name, c.Detail)
		}
	}
	for _, pr := range pairs {
		if !pr.Holds() {
			t.Errorf("%s calling %s: got %v (%s), matrix allows: %v", pr.Caller, pr.Method, pr.Code, pr.Message, pr.Allowed)
		}
	}
	return report, pairs
}

// logTails logs the last 4,000 bytes of each named process's log in dir.
func logTails(t *testing.T, dir string, names ...string) {
	t.Helper()
	for _, n := range names {
		b, _ := os.ReadFile(filepath.Join(dir, n+".log"))
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		t.Logf("--- %s.log (tail)\n%s", n, b)
	}
}
