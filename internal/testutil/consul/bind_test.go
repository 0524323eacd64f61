package consul

import (
	"errors"
	"net"
	"path/filepath"
	"strconv"
	"testing"
)

// TestStartReportsPortTaken: when a port the harness picked is taken before
// the agent binds it (the race Start retries), start reports errBind, so
// Start picks new ports instead of failing; also when what holds the HTTP
// port is another agent that answers, which must not pass for this one.
func TestStartReportsPortTaken(t *testing.T) {
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	other := Start(t)
	otherPort, _ := strconv.Atoi(other.Addr()[len("127.0.0.1:"):])
	tests := []struct {
		name string
		take func(p *ports) // points one of p at a taken port, or takes it
	}{
		{"http port held by a silent listener", func(p *ports) { p.http = listen(t) }},
		{"server port", func(p *ports) { p.server = listen(t) }},
		{"serf LAN port", func(p *ports) { p.serfLAN = listen(t) }},
		{"http port of another agent", func(p *ports) { p.http = otherPort }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := freePorts()
			if err != nil {
				t.Fatal(err)
			}
			tt.take(&p)
			dir := t.TempDir()
			a := &Agent{bin: bin, cfg: config{datacenter: "dc1"}, dir: dir, logPath: filepath.Join(dir, "agent.log"), ports: p, nodeID: newUUID()}
			err = a.start()
			if err == nil {
				a.proc.kill()
				t.Fatalf("agent reported ready with ports %+v, one of them taken", p)
			}
			if !errors.Is(err, errBind) {
				t.Errorf("start: %v; want errBind", err)
			}
		})
	}
}

// listen holds a loopback TCP port until the test ends and returns it. It
// accepts connections (into the backlog) and never answers.
func listen(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}
