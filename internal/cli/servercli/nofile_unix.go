//go:build unix

package servercli

import "syscall"

// openFileLimit is the process's open-file limit (the soft RLIMIT_NOFILE,
// which the Go runtime raises to the hard one at start).
func openFileLimit() (uint64, bool) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, false
	}
	return uint64(rl.Cur), true
}
