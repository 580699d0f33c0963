//go:build unix

package identity

import (
	"os"
	"syscall"
)

// lockFile takes an advisory lock on f, exclusive or shared, held until f
// is closed: agents started at once (several sessions, several processes)
// read and append the known_gateways file one at a time.
func lockFile(f *os.File, exclusive bool) error {
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if err != syscall.EINTR {
			return err
		}
	}
}
