//go:build !unix

package exec

import osexec "os/exec"

// inGroup does nothing where there are no process groups: cancellation
// kills the hook's own process only.
func inGroup(*osexec.Cmd) {}
