package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gridmesh/gridmesh/bench/internal/loadgen"
)

// process is one child the harness started.
type process struct {
	name string
	role string // "load", "server", "proxy", "sink", "control"
	side string // "client" or "server"
	cmd  *exec.Cmd
	log  string // stderr (and for proxies stdout) file
	out  *bufio.Reader
	in   io.WriteCloser
	done chan struct{}
}

func (p *process) pid() int { return p.cmd.Process.Pid }

// launcher starts children, pinned to a CPU when pinning is on, and stops
// them all at the end.
type launcher struct {
	dir   string
	pin   bool
	procs []*process
}

// cpuFor returns the CPU a role runs on: the client side (load generator,
// client-side proxy) on CPU 0 and the server side on CPU 1, so the two
// sides do not steal each other's core.
func (l *launcher) cpuFor(side string) int {
	if side == "client" {
		return 0
	}
	return 1
}

// start runs argv. With stdio, it keeps pipes to the child's stdin and
// stdout; stderr goes to a log file.
func (l *launcher) start(name, role, side string, env []string, stdio bool, argv ...string) (*process, error) {
	if l.pin {
		argv = append([]string{"taskset", "-c", fmt.Sprint(l.cpuFor(side))}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	logName := filepath.Join(l.dir, name+".log")
	logf, err := os.Create(logName)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd.Stderr = logf
	p := &process{name: name, role: role, side: side, cmd: cmd, log: logName, done: make(chan struct{})}
	if stdio {
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		p.out = bufio.NewReader(stdout)
		if p.in, err = cmd.StdinPipe(); err != nil {
			return nil, err
		}
	} else {
		cmd.Stdout = logf
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	l.procs = append(l.procs, p)
	return p, nil
}

// readLine reads one stdout line of p within d.
func (p *process) readLine(d time.Duration) (string, error) {
	type res struct {
		s   string
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := p.out.ReadString('\n')
		ch <- res{strings.TrimSpace(s), err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return "", fmt.Errorf("%s exited: %w%s", p.name, r.err, p.tail())
		}
		return r.s, nil
	case <-time.After(d):
		return "", fmt.Errorf("%s: no answer within %v%s", p.name, d, p.tail())
	}
}

// tail returns the end of p's log for error messages.
func (p *process) tail() string {
	b, _ := os.ReadFile(p.log)
	s := strings.TrimSpace(string(b))
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	if s == "" {
		return ""
	}
	return "\n--- " + p.log + " ---\n" + s
}

// startServer starts a benchmark server and returns it with its address.
func (l *launcher) startServer(name string, env []string, args ...string) (*process, string, error) {
	p, err := l.start(name, "server", "server", env, true, args...)
	if err != nil {
		return nil, "", err
	}
	line, err := p.readLine(30 * time.Second)
	if err != nil {
		return nil, "", err
	}
	addr, ok := strings.CutPrefix(line, "listening ")
	if !ok {
		return nil, "", fmt.Errorf("%s: unexpected first line %q", name, line)
	}
	return p, addr, nil
}

// startLoad starts a load generator and waits for its first call to pass.
func (l *launcher) startLoad(name string, env []string, args ...string) (*process, error) {
	p, err := l.start(name, "load", "client", env, true, args...)
	if err != nil {
		return nil, err
	}
	line, err := p.readLine(30 * time.Second)
	if err != nil {
		return nil, err
	}
	if line != "ready" {
		return nil, fmt.Errorf("%s: unexpected first line %q%s", name, line, p.tail())
	}
	return p, nil
}

// loadResult is what the load generator answers to "run".
type loadResult struct {
	loadgen.Result
	CPUSeconds float64 `json:"cpu_seconds"`
}

func (p *process) command(verb string, spec loadgen.Spec, timeout time.Duration) (string, error) {
	b, err := json.Marshal(spec)
	if err != nil {
		return "", err
	}
	if _, err := fmt.Fprintf(p.in, "%s %s\n", verb, b); err != nil {
		return "", fmt.Errorf("%s: %w%s", p.name, err, p.tail())
	}
	return p.readLine(timeout)
}

func (p *process) warm(spec loadgen.Spec) error {
	line, err := p.command("warm", spec, spec.Warmup+30*time.Second)
	if err == nil && line != "warm" {
		err = fmt.Errorf("%s: unexpected answer %q", p.name, line)
	}
	return err
}

func (p *process) run(spec loadgen.Spec) (loadResult, error) {
	var r loadResult
	line, err := p.command("run", spec, spec.Duration+60*time.Second)
	if err != nil {
		return r, err
	}
	js, ok := strings.CutPrefix(line, "result ")
	if !ok {
		return r, fmt.Errorf("%s: unexpected answer %q", p.name, line)
	}
	return r, json.Unmarshal([]byte(js), &r)
}

// stopAll ends every child: SIGTERM, then SIGKILL after a grace period.
func (l *launcher) stopAll() {
	for _, p := range l.procs {
		if p.in != nil {
			p.in.Close()
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.After(5 * time.Second)
	for _, p := range l.procs {
		select {
		case <-p.done:
		case <-deadline:
			p.cmd.Process.Kill()
			<-p.done
		}
	}
}

// freePort returns a loopback port nothing listens on right now.
func freePort() (int, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer lis.Close()
	return lis.Addr().(*net.TCPAddr).Port, nil
}

// waitFile waits for path to exist.
func waitFile(ctx context.Context, path string, p *process) error {
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not write %s: %w%s", p.name, path, ctx.Err(), p.tail())
		case <-p.done:
			return errors.New(p.name + " exited" + p.tail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitListen waits until something accepts TCP connections on addr.
func waitListen(ctx context.Context, addr string, p *process) error {
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s does not listen on %s: %w%s", p.name, addr, ctx.Err(), p.tail())
		case <-p.done:
			return errors.New(p.name + " exited" + p.tail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
