//go:build linux

package nginxtest

import (
	"os/exec"
	"syscall"
)

// killWithParent has the kernel kill nginx if the test process dies
// before its cleanup runs (a killed or crashed test).
func killWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
