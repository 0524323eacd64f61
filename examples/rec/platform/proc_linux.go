package platform

import "syscall"

// sysProcAttr puts each service in its own process group and has the
// kernel kill it if the runner dies without stopping it (a SIGKILLed demo
// or test binary), so no service outlives its runner.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
