package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gridmesh/gridmesh/controlplane"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
)

// TestServeRefusesHalfWrittenConfigAtStart: meshd does not start on a file
// that may be half-written; there is no last good config to keep.
func TestServeRefusesHalfWrittenConfigAtStart(t *testing.T) {
	tests := []struct {
		name, content, want string
	}{
		{"empty", "", `line 1: the file is empty (or holds only comments); meshd does not read that as "no services": to remove every service, write services: []`},
		{"only comments", "# services: []\n", "line 1: the file is empty"},
		{"cut mid-line", "services:\n  - name: trading\n    port: 84", "line 3: the file does not end with a newline"},
		{"cut before services", "mtls: true\n", "line 1: services: missing; a config lists its services"},
		{"cut after a key", "services:\n  - name: trading\n    endpoints:\n", "line 3: services[0].endpoints: has no value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			path := filepath.Join(t.TempDir(), "meshd.yaml")
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := parseServeFlags([]string{"-config", path, "-listen", "127.0.0.1:0", "-insecure-plaintext-xds-for-local-debugging"}, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			logs := &syncBuffer{}
			err = serve(ctx, f, slog.New(slog.NewTextHandler(logs, nil)), nil, nil)
			var ce *controlplane.ConfigError
			if !errors.As(err, &ce) || !strings.HasPrefix(err.Error(), "controlplane: "+path+" refused: "+tt.want) {
				t.Errorf("serve: %v\nwant: controlplane: %s refused: %s...", err, path, tt.want)
			}
			// main prints the error; it is not logged as well.
			if strings.Contains(logs.String(), "refused") {
				t.Errorf("the refusal was logged as well as returned:\n%s", logs.String())
			}
		})
	}
}

// syncBuffer is a bytes.Buffer for a logger and a test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestServeKeepsLastGoodConfigWhenFileIsEmptied: a running meshd whose
// config file is truncated in place, or replaced by one cut mid-line,
// keeps serving the last good config and logs the refusal; "services: []"
// then removes the services.
func TestServeKeepsLastGoodConfigWhenFileIsEmptied(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "meshd.yaml")
	good := "services:\n  - name: trading\n    endpoints: [\"127.0.0.1:7001\"]\n"
	if err := os.WriteFile(path, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := parseServeFlags([]string{"-config", path, "-listen", "127.0.0.1:0", "-startup-grace", "0", "-watch-interval", "10ms", "-insecure-plaintext-xds-for-local-debugging"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	ready := make(chan string, 1)
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- serve(sctx, f, slog.New(slog.NewTextHandler(logs, nil)), nil, func(_, h string) { ready <- h })
	}()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	var httpAddr string
	select {
	case httpAddr = <-ready:
	case err := <-done:
		t.Fatalf("serve: %v", err)
	}
	served := func() (string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+"/debug/config", nil)
		if err != nil {
			return "", err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	const tradingListener = `"name":"trading"`
	checkStillServed := func(what string) {
		t.Helper()
		body, err := served()
		if err != nil || !strings.Contains(body, tradingListener) {
			t.Errorf("after %s: /debug/config lacks the trading listener (%v): %.300s", what, err, body)
		}
	}
	xdstest.WaitFor(ctx, t, "trading served", func() error {
		body, err := served()
		if err != nil || !strings.Contains(body, tradingListener) {
			return fmt.Errorf("%v %.200s", err, body)
		}
		return nil
	})

	steps := []struct {
		what    string
		write   func() error
		wantLog string
	}{
		{"truncating the file in place", func() error { return os.Truncate(path, 0) }, "the file is empty"},
		{"a file cut mid-line", func() error { return os.WriteFile(path, []byte(good[:len(good)-5]), 0o600) }, "does not end with a newline"},
	}
	for _, st := range steps {
		if err := st.write(); err != nil {
			t.Fatal(err)
		}
		xdstest.WaitFor(ctx, t, "the refusal logged", func() error {
			if !strings.Contains(logs.String(), st.wantLog) {
				return xdstest.ErrNotYet
			}
			return nil
		})
		if l := logs.String(); !strings.Contains(l, "input refused; still serving the last good config") {
			t.Errorf("after %s, log:\n%s", st.what, l)
		}
		checkStillServed(st.what)
	}

	if err := os.WriteFile(path, []byte("services: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	xdstest.WaitFor(ctx, t, "trading removed", func() error {
		body, err := served()
		if err != nil || strings.Contains(body, tradingListener) {
			return fmt.Errorf("%v %.200s", err, body)
		}
		return nil
	})
}
