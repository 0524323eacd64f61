package consul

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// process is one running consul agent, its output appended to a log file.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // set before done is closed
}

func startProcess(logPath, bin string, args ...string) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("consul: agent log: %w", err)
	}
	fmt.Fprintf(logf, "=== %s: start %s %s\n", time.Now().UTC().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Own process group, so a signal reaches only the agent; killed with the
	// test binary if that dies without running its cleanups (a go test
	// timeout).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("consul: start %s: %w", bin, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended, and how.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

func (p *process) signal(sig syscall.Signal) {
	if ended, _ := p.exited(); !ended {
		_ = syscall.Kill(p.cmd.Process.Pid, sig)
	}
}

// signalAndSettle sends SIGSTOP or SIGCONT and waits (up to 5 s) until
// every thread of the process shows the new state in /proc. A signal is
// delivered asynchronously: without the wait a request sent right after
// SIGSTOP can still be answered by a thread that has not stopped yet.
func (p *process) signalAndSettle(sig syscall.Signal) error {
	p.signal(sig)
	wantStopped := sig == syscall.SIGSTOP
	deadline := time.Now().Add(5 * time.Second)
	for {
		if ended, _ := p.exited(); ended {
			return nil
		}
		stopped, err := allThreadsStopped(p.cmd.Process.Pid)
		if err == nil && stopped == wantStopped {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("consul: agent pid %d: threads not settled after %v (stopped=%v, want %v, err=%v)", p.cmd.Process.Pid, sig, stopped, wantStopped, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// allThreadsStopped reports true when every thread of pid is in state T
// (stopped) and false when none is. A mix of states is an error, so the
// caller waits on.
func allThreadsStopped(pid int) (bool, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return false, err
	}
	var stopped, running int
	for _, task := range tasks {
		stat, err := os.ReadFile(dir + "/" + task.Name() + "/stat")
		if err != nil {
			continue // the thread ended
		}
		// The state follows the command name, which is in parentheses
		// and may hold spaces: "pid (comm) S ...".
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 || i+2 >= len(stat) {
			return false, fmt.Errorf("%s/%s/stat: unexpected format", dir, task.Name())
		}
		if stat[i+2] == 'T' || stat[i+2] == 't' {
			stopped++
		} else {
			running++
		}
	}
	switch {
	case running == 0 && stopped > 0:
		return true, nil
	case stopped == 0:
		return false, nil
	default:
		return false, errors.New("threads in mixed states")
	}
}

// kill ends the process at once and waits for it. Safe to call more than
// once.
func (p *process) kill() {
	p.signal(syscall.SIGKILL)
	<-p.done
}

// interrupt sends SIGINT (a Consul agent's shutdown signal) and waits up
// to grace for the process to end, then kills it. A stopped (paused)
// process is continued too, so it can handle the signal.
func (p *process) interrupt(grace time.Duration) {
	if ended, _ := p.exited(); ended {
		return
	}
	p.signal(syscall.SIGINT)
	p.signal(syscall.SIGCONT)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
	case <-timer.C:
		p.kill()
	}
}

// tailFile returns the last n lines of the file at path.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// ports are the agent's listening ports.
type ports struct {
	http, server, serfLAN, serfWAN int
}

// freePorts picks four distinct ports that are free on 127.0.0.1 right now:
// TCP for all four, UDP as well for the two Serf ports. All stay held until
// all are picked, so they differ; they are released before returning, so
// another process can take one before the agent binds it (see [Start]).
func freePorts() (ports, error) {
	var closers []func() error
	defer func() {
		for _, c := range closers {
			_ = c()
		}
	}()
	pick := func(udp bool) (int, error) {
		for range 20 {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return 0, fmt.Errorf("consul: pick a free port: %w", err)
			}
			closers = append(closers, ln.Close)
			port := ln.Addr().(*net.TCPAddr).Port
			if !udp {
				return port, nil
			}
			pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				continue // UDP side taken: try another port
			}
			closers = append(closers, pc.Close)
			return port, nil
		}
		return 0, errors.New("consul: no port free for both TCP and UDP after 20 tries")
	}
	var p ports
	var err error
	if p.http, err = pick(false); err != nil {
		return ports{}, err
	}
	if p.server, err = pick(false); err != nil {
		return ports{}, err
	}
	if p.serfLAN, err = pick(true); err != nil {
		return ports{}, err
	}
	if p.serfWAN, err = pick(true); err != nil {
		return ports{}, err
	}
	return p, nil
}
