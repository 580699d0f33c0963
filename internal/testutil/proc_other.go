//go:build !linux

package testutil

import "os/exec"

// KillWithParent does nothing here: only Linux can tie a child's life to
// its parent's.
func KillWithParent(*exec.Cmd) {}
