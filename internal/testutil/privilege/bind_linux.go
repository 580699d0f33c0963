package privilege

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// WithoutBindService runs f on an OS thread of its own that has given up
// the capability to bind ports below 1024 (CAP_NET_BIND_SERVICE), as an
// unprivileged user runs, and returns f's error. Like WithoutFileAccess,
// the thread stays locked to the goroutine and ends with it; f must bind
// on the calling goroutine.
func WithoutBindService(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capget: %w", err)
			return
		}
		data[0].Effective &^= 1 << unix.CAP_NET_BIND_SERVICE
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capset: %w", err)
			return
		}
		errc <- f()
	}()
	return <-errc
}
