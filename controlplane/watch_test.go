package controlplane_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gridmesh/gridmesh/controlplane"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
)

// waitAbove waits until count() is above before.
func waitAbove(ctx context.Context, t *testing.T, what string, before int64, count func() int64) {
	t.Helper()
	xdstest.WaitFor(ctx, t, what, func() error {
		if count() == before {
			return xdstest.ErrNotYet
		}
		return nil
	})
}

// logged says whether one line of logs holds every one of subs.
func logged(logs *lockedBuffer, subs ...string) bool {
	for _, l := range strings.Split(logs.String(), "\n") {
		if !slices.ContainsFunc(subs, func(s string) bool { return !strings.Contains(l, s) }) {
			return true
		}
	}
	return false
}

const watchedGood = "services:\n  - name: a\n    endpoints: [\"127.0.0.1:7001\"]\n  - name: b\n    endpoints: [\"127.0.0.1:7002\"]\n"

// serviceNames lists the services of the snapshot in force (its API
// listeners).
func serviceNames(s *controlplane.Server) []string {
	var names []string
	for _, l := range s.Snapshot().Listeners {
		if !strings.HasPrefix(l.GetName(), "grpc/server") {
			names = append(names, l.GetName())
		}
	}
	return names
}

// rewrite replaces the file's content as writers do: "rename" writes a
// temporary file and renames it over path (editors, ConfigMaps); "in
// place" truncates path and writes into it (shell redirection, naive
// writers), so the file is empty for a moment.
func rewrite(t *testing.T, how, path, content string) {
	t.Helper()
	switch how {
	case "rename":
		writeFile(t, path, content)
	case "in place":
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("rewrite %q", how)
	}
}

// startWatch loads path into a new server and watches it every 5ms until
// the test ends.
func startWatch(t *testing.T, path string) (*controlplane.Server, *lockedBuffer) {
	t.Helper()
	logs := &lockedBuffer{}
	s := controlplane.NewServer(controlplane.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	t.Cleanup(func() { s.Close() })
	if err := s.LoadConfigFile(path); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.WatchConfigFile(ctx, path, 5*time.Millisecond) }()
	t.Cleanup(func() { cancel(); <-done })
	return s, logs
}

// TestWatchConfigFileKeepsLastGoodOnRefusedFile rewrites a watched file
// with what a half-written or wrong file looks like, by rename and in
// place: each is refused and logged, the last good config stays in force,
// and the good file applies again after it. Removing every service takes
// "services: []".
func TestWatchConfigFileKeepsLastGoodOnRefusedFile(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "meshd.yaml")
	writeFile(t, path, watchedGood)
	s, logs := startWatch(t, path)
	version := s.Version()
	wantServices := []string{"a", "b"}
	if diff := cmpDiff(wantServices, serviceNames(s)); diff != "" {
		t.Fatalf("services (-want +got):\n%s", diff)
	}

	bad := []struct {
		name, content, wantLog string
	}{
		{"empty", "", "the file is empty"},
		{"only comments", "# services: []\n", "the file is empty"},
		{"cut mid-line", watchedGood[:len(watchedGood)-12], "does not end with a newline"},
		{"cut after a key", "services:\n  - name: a\n    endpoints:\n", "services[0].endpoints: has no value"},
		{"cut before services", "mtls: false\n", "services: missing"},
		{"two documents", watchedGood + "---\n" + watchedGood, "a second YAML document starts here"},
		{"over the size limit", watchedGood + "#" + strings.Repeat("x", controlplane.MaxConfigSize) + "\n", "over the limit of 4194304 bytes"},
		{"invalid", strings.Replace(watchedGood, "name: b", "name: B", 1), `services[1].name: \"B\" is not allowed`},
	}
	for _, b := range bad {
		for _, how := range []string{"rename", "in place"} {
			t.Run(b.name+" by "+how, func(t *testing.T) {
				rejections := s.Stats().Rejections
				rewrite(t, how, path, b.content)
				waitAbove(ctx, t, "the file refused", rejections, func() int64 { return s.Stats().Rejections })
				if got := s.Version(); got != version {
					t.Errorf("version %s after a refused file, want %s", got, version)
				}
				if diff := cmpDiff(wantServices, serviceNames(s)); diff != "" {
					t.Errorf("services after a refused file (-want +got):\n%s", diff)
				}
				if !logged(logs, "input refused; still serving the last good config", path, b.wantLog) {
					t.Errorf("no refusal logged with %q; log:\n%s", b.wantLog, logs.String())
				}
				// The good file applies again (same content: same version).
				loads := s.Stats().ConfigLoads
				rewrite(t, how, path, watchedGood)
				waitAbove(ctx, t, "the good file loaded again", loads, func() int64 { return s.Stats().ConfigLoads })
			})
		}
	}

	rewrite(t, "in place", path, "services: []\n")
	xdstest.WaitFor(ctx, t, "every service removed", func() error {
		if names := serviceNames(s); len(names) != 0 {
			return fmt.Errorf("services %v", names)
		}
		return nil
	})
}

// TestWatchConfigFileInPlaceWriteSeenHalfWay: a writer that truncates the
// watched file and writes it in two parts, stalling between them, is seen
// empty and then cut mid-line; both are refused, and the whole file
// applies once written.
func TestWatchConfigFileInPlaceWriteSeenHalfWay(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "meshd.yaml")
	writeFile(t, path, watchedGood)
	s, logs := startWatch(t, path)
	version := s.Version()

	next := watchedGood + "  - name: c\n    endpoints: [\"127.0.0.1:7003\"]\n"
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	waitRefused := func(what string) {
		t.Helper()
		waitAbove(ctx, t, what+" refused", s.Stats().Rejections, func() int64 { return s.Stats().Rejections })
		if got := s.Version(); got != version {
			t.Errorf("version %s after %s, want %s", got, what, version)
		}
		if diff := cmpDiff([]string{"a", "b"}, serviceNames(s)); diff != "" {
			t.Errorf("services after %s (-want +got):\n%s", what, diff)
		}
	}
	waitRefused("the truncated file")
	half := len(watchedGood) + 9 // "  - name: c" cut to "  - name:"... mid-line
	if _, err := f.Write([]byte(next[:half])); err != nil {
		t.Fatal(err)
	}
	waitRefused("the half-written file")
	if _, err := f.Write([]byte(next[half:])); err != nil {
		t.Fatal(err)
	}
	xdstest.WaitFor(ctx, t, "the whole file applied", func() error {
		if diff := cmpDiff([]string{"a", "b", "c"}, serviceNames(s)); diff != "" {
			return fmt.Errorf("services (-want +got):\n%s", diff)
		}
		return nil
	})
	if !logged(logs, "input refused", "the file is empty") || !logged(logs, "input refused", "does not end with a newline") {
		t.Errorf("refusals not logged; log:\n%s", logs.String())
	}
}
