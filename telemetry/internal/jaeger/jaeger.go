// Package jaeger runs a real trace backend for tests: Jaeger all-in-one
// (v2, in-memory storage) with OTLP and its query API on loopback ports of
// its own, and reads traces back through the query API.
//
// The binary is not built here: build.sh builds it once into a cache
// (about 15 minutes the first time). Start fails with that instruction when
// it is missing, or skips the test when GRIDMESH_SKIP_JAEGER=1.
package jaeger

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Version is the Jaeger release build.sh builds.
const Version = "v1.76.0"

// SkipEnv names the variable that, set to 1, makes Start skip the test.
const SkipEnv = "GRIDMESH_SKIP_JAEGER"

// DirEnv overrides the directory holding the binary (as for build.sh).
const DirEnv = "GRIDMESH_JAEGER_DIR"

// Jaeger is a running Jaeger.
type Jaeger struct {
	// OTLPGRPC and OTLPHTTP are the OTLP receivers, host:port.
	OTLPGRPC, OTLPHTTP string
	// Query is the base URL of the query API and UI.
	Query string
}

func binary() (string, error) {
	dir := os.Getenv(DirEnv)
	if dir == "" {
		cache := os.Getenv("XDG_CACHE_HOME")
		if cache == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return "", err
			}
			cache = filepath.Join(home, ".cache")
		}
		dir = filepath.Join(cache, "gridmesh", "jaeger-"+Version)
	}
	bin := filepath.Join(dir, "jaeger")
	if _, err := os.Stat(filepath.Join(dir, "stamp")); err != nil {
		return "", fmt.Errorf("jaeger: Jaeger %s not found in %s: run `bash telemetry/internal/jaeger/build.sh` from the repository root (about 15 minutes the first time, then cached), or set %s=1 to skip these tests", Version, dir, SkipEnv)
	}
	return bin, nil
}

func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

const config = `service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: mem
    http:
      endpoint: %s
    grpc:
      endpoint: %s
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: %s
      http:
        endpoint: %s
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
`

// Start runs Jaeger until the test ends, every port on 127.0.0.1, and
// waits until its query API answers.
func Start(t testing.TB) *Jaeger {
	t.Helper()
	if os.Getenv(SkipEnv) == "1" {
		t.Skipf("%s=1", SkipEnv)
	}
	bin, err := binary()
	if err != nil {
		t.Fatal(err)
	}
	j := &Jaeger{OTLPGRPC: freePort(t), OTLPHTTP: freePort(t)}
	queryHTTP, queryGRPC := freePort(t), freePort(t)
	j.Query = "http://" + queryHTTP
	cfg := filepath.Join(t.TempDir(), "jaeger.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, config, queryHTTP, queryGRPC, j.OTLPGRPC, j.OTLPHTTP), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := exec.Command(bin, "--config", "file:"+cfg)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("jaeger: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("jaeger output:\n%s", out.String())
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		var services struct{ Data []string }
		err := j.get(ctx, "/api/services", nil, &services)
		cancel()
		if err == nil {
			return j
		}
		select {
		case err := <-exited:
			t.Fatalf("jaeger exited: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("jaeger: query API not up within 60s: %v\n%s", err, out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (j *Jaeger) get(ctx context.Context, path string, q url.Values, v any) error {
	u := j.Query + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// Trace is a trace as the query API returns it.
type Trace struct {
	TraceID   string             `json:"traceID"`
	Spans     []Span             `json:"spans"`
	Processes map[string]Process `json:"processes"`
}

// Span is one span of a Trace.
type Span struct {
	TraceID       string      `json:"traceID"`
	SpanID        string      `json:"spanID"`
	OperationName string      `json:"operationName"`
	References    []Reference `json:"references"`
	Tags          []Tag       `json:"tags"`
	ProcessID     string      `json:"processID"`
}

// Reference links a span to its parent.
type Reference struct {
	RefType string `json:"refType"`
	TraceID string `json:"traceID"`
	SpanID  string `json:"spanID"`
}

// Tag is a span attribute.
type Tag struct {
	Key   string `json:"key"`
	Value any    `json:"value"`
}

// Process is the service that reported spans.
type Process struct {
	ServiceName string `json:"serviceName"`
}

// Tag returns the value of the span's tag key, or "".
func (s Span) Tag(key string) string {
	for _, t := range s.Tags {
		if t.Key == key {
			return fmt.Sprint(t.Value)
		}
	}
	return ""
}

// Traces returns the recent traces that have spans of service.
func (j *Jaeger) Traces(ctx context.Context, service string) ([]Trace, error) {
	var r struct{ Data []Trace }
	if err := j.get(ctx, "/api/traces", url.Values{"service": {service}, "limit": {"100"}, "lookback": {"1h"}}, &r); err != nil {
		return nil, fmt.Errorf("jaeger: traces of %s: %w", service, err)
	}
	return r.Data, nil
}

// Trace returns one trace by ID.
func (j *Jaeger) Trace(ctx context.Context, traceID string) (Trace, error) {
	var r struct{ Data []Trace }
	if err := j.get(ctx, "/api/traces/"+strings.ToLower(traceID), nil, &r); err != nil {
		return Trace{}, fmt.Errorf("jaeger: trace %s: %w", traceID, err)
	}
	if len(r.Data) != 1 {
		return Trace{}, fmt.Errorf("jaeger: trace %s: %d traces returned", traceID, len(r.Data))
	}
	return r.Data[0], nil
}
