//go:build linux

package dnstest

import (
	"os/exec"
	"syscall"
)

// killWithParent has the kernel kill the server if the test process dies
// before its cleanup runs (a killed or crashed test).
func killWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
