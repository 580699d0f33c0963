//go:build linux

package testutil

import (
	"os/exec"
	"syscall"
)

// KillWithParent has the kernel kill the program cmd starts if the test
// process dies before its cleanup runs (a killed or crashed test).
func KillWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
