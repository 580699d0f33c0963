//go:build unix

package exec

import (
	osexec "os/exec"
	"syscall"
)

// inGroup makes cmd the leader of a new process group, and its
// cancellation kill that whole group: the hook and whatever it started.
func inGroup(cmd *osexec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}
