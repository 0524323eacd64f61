//go:build !linux

package platform

import "syscall"

// sysProcAttr puts each service in its own process group.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
