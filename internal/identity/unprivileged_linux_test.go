package identity

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// loadUnprivileged runs LoadOrCreateKey on an OS thread of its own that has
// given up the capabilities to read any file (CAP_DAC_OVERRIDE and
// CAP_DAC_READ_SEARCH), so that file permissions hold even when the tests
// run as root. Capabilities belong to a thread: the thread is locked to
// the goroutine and never unlocked, so it ends with it.
func loadUnprivileged(dir string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capget: %w", err)
			return
		}
		const drop = 1<<unix.CAP_DAC_OVERRIDE | 1<<unix.CAP_DAC_READ_SEARCH
		data[0].Effective &^= drop
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capset: %w", err)
			return
		}
		_, _, err := LoadOrCreateKey(dir)
		errc <- err
	}()
	return <-errc
}
