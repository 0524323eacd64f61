// Package layering_test checks the dependency rule of the architecture:
// cmd and examples → mesh → security, discovery, resilience, telemetry →
// internal. The four leaf packages never import mesh or each other; the
// control plane never pulls in grpc-go's xDS client; examples use only
// public API.
package layering_test

import (
	"bufio"
	"bytes"
	"context"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

const module = "github.com/gridmesh/gridmesh"

// leaves are the packages (with their subpackages) that mesh wires
// together and that never import each other or mesh.
var leaves = []string{"security", "discovery", "resilience", "telemetry"}

// goList runs `go list` over the whole module with format, one line per
// package.
func goList(t *testing.T, args ...string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", append([]string{"list"}, args...)...)
	cmd.Dir = "../.."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// rel returns path relative to the module, or "" for a package outside it.
func rel(path string) string {
	if path == module {
		return "."
	}
	r, ok := strings.CutPrefix(path, module+"/")
	if !ok {
		return ""
	}
	return r
}

// group returns the top-level directory of a module package ("security" for
// "security/internal/x").
func group(r string) string {
	g, _, _ := strings.Cut(r, "/")
	return g
}

func isInternal(r string) bool {
	return r == "internal" || strings.HasPrefix(r, "internal/") || strings.Contains(r, "/internal/") || strings.HasSuffix(r, "/internal")
}

// imports maps each module package (relative) to its direct imports within
// the module (relative), test files excluded.
func imports(t *testing.T) map[string][]string {
	out := map[string][]string{}
	for _, l := range goList(t, "-f", `{{.ImportPath}} {{join .Imports " "}}`, "./...") {
		fields := strings.Fields(l)
		pkg := rel(fields[0])
		if pkg == "" {
			continue
		}
		var deps []string
		for _, d := range fields[1:] {
			if r := rel(d); r != "" {
				deps = append(deps, r)
			}
		}
		out[pkg] = deps
	}
	return out
}

// violations applies the layering rules to a package graph and returns one
// line per broken rule.
func violations(graph map[string][]string) []string {
	var bad []string
	usedByLeaf := map[string]bool{}
	for pkg, deps := range graph {
		if slices.Contains(leaves, group(pkg)) {
			for _, d := range deps {
				if group(d) == "internal" {
					usedByLeaf[d] = true
				}
			}
		}
	}
	for pkg, deps := range graph {
		g := group(pkg)
		for _, d := range deps {
			dg := group(d)
			switch {
			case slices.Contains(leaves, g) && dg != g && dg != "internal":
				bad = append(bad, pkg+" imports "+d+": a leaf package may import only its own subpackages and internal/")
			case g == "internal" && !strings.HasPrefix(pkg, "internal/testutil") && slices.Contains([]string{"mesh", "cmd", "examples", "bench", "test"}, dg):
				bad = append(bad, pkg+" imports "+d+": internal/ sits below mesh, cmd and examples")
			case usedByLeaf[pkg] && slices.Contains(leaves, dg):
				bad = append(bad, pkg+" imports "+d+": it is used by a leaf package, so it may not import one")
			case g == "controlplane" && (dg == "mesh" || slices.Contains(leaves, dg)):
				bad = append(bad, pkg+" imports "+d+": the control plane does not depend on the data plane")
			case g == "examples" && isInternal(d):
				bad = append(bad, pkg+" imports "+d+": examples use only public API")
			}
		}
	}
	slices.Sort(bad)
	return bad
}

func TestLayering(t *testing.T) {
	if bad := violations(imports(t)); len(bad) > 0 {
		t.Errorf("the dependency rule of ARCHITECTURE.md is broken:\n%s", strings.Join(bad, "\n"))
	}
}

// TestControlPlaneHasNoXDSClient checks that meshd's library does not link
// grpc-go's xDS client (the client's packages register resolvers, balancers
// and a global client pool at init).
func TestControlPlaneHasNoXDSClient(t *testing.T) {
	for _, dep := range goList(t, "-deps", "./controlplane/...") {
		if strings.HasPrefix(dep, "google.golang.org/grpc/xds") || strings.HasPrefix(dep, "google.golang.org/grpc/internal/xds") {
			t.Errorf("controlplane depends on %s (grpc-go's xDS client); shared names belong in internal/xdsname", dep)
		}
	}
}

// TestViolationsCatchesEachRule makes sure the rule checker itself fails
// on each kind of bad import.
func TestViolationsCatchesEachRule(t *testing.T) {
	cases := []struct {
		name  string
		graph map[string][]string
		want  int
	}{
		{"clean", map[string][]string{"mesh": {"security", "internal/x"}, "security": {"internal/x"}, "internal/x": nil}, 0},
		{"leaf imports mesh", map[string][]string{"security": {"mesh"}}, 1},
		{"leaf imports leaf", map[string][]string{"discovery": {"telemetry"}}, 1},
		{"leaf subpackage imports leaf", map[string][]string{"telemetry/x": {"security"}}, 1},
		{"leaf imports own subpackage", map[string][]string{"resilience": {"resilience/idempotency"}}, 0},
		{"internal imports mesh", map[string][]string{"internal/x": {"mesh"}}, 1},
		{"internal used by a leaf imports a leaf", map[string][]string{"security": {"internal/x"}, "internal/x": {"discovery"}}, 1},
		{"controlplane imports mesh", map[string][]string{"controlplane": {"mesh"}}, 1},
		{"example imports internal", map[string][]string{"examples/rec/x": {"internal/x"}}, 1},
		{"example imports leaf internal", map[string][]string{"examples/rec/x": {"telemetry/internal/jaeger"}}, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := violations(c.graph); len(got) != c.want {
				t.Errorf("violations = %q, want %d", got, c.want)
			}
		})
	}
}
