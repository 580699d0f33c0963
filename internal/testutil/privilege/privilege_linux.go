// Package privilege runs test code without the privilege to read any
// file, so that tests of permission errors mean something when the suite
// runs as root (as it does in CI).
package privilege

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// WithoutFileAccess runs f on an OS thread of its own that has given up
// the capabilities to read and search any file (CAP_DAC_OVERRIDE and
// CAP_DAC_READ_SEARCH), and returns f's error. Capabilities belong to a
// thread: it stays locked to the goroutine, which never unlocks it, so
// the thread ends with the goroutine. f must do its file operations on
// the calling goroutine.
func WithoutFileAccess(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capget: %w", err)
			return
		}
		data[0].Effective &^= 1<<unix.CAP_DAC_OVERRIDE | 1<<unix.CAP_DAC_READ_SEARCH
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capset: %w", err)
			return
		}
		errc <- f()
	}()
	return <-errc
}
