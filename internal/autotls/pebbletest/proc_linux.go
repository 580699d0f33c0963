//go:build linux

package pebbletest

import (
	"os/exec"
	"syscall"
)

// killWithParent has the kernel kill the started program if the test
// process dies before its cleanup runs (a killed or crashed test).
func killWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
