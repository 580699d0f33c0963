// Package privilege runs test code without a privilege root has, so that
// tests of permission errors mean something when the suite runs as root
// (as it does in CI).
package privilege

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// WithoutFileAccess runs f on an OS thread of its own that has given up
// the capabilities to read and search any file (CAP_DAC_OVERRIDE and
// CAP_DAC_READ_SEARCH), and returns f's error. f must do its file
// operations on the calling goroutine.
func WithoutFileAccess(f func() error) error {
	return onThread(nil, 1<<unix.CAP_DAC_OVERRIDE|1<<unix.CAP_DAC_READ_SEARCH, f)
}

// WithoutBindService runs f on an OS thread of its own that has given up
// the capability to bind ports below 1024 (CAP_NET_BIND_SERVICE), in a
// network namespace of its own where ports below 1024 need it whatever
// the machine's setting (net.ipv4.ip_unprivileged_port_start), as an
// unprivileged user runs; it returns f's error. f must bind on the
// calling goroutine, and reaches only the namespace's own loopback.
func WithoutBindService(f func() error) error {
	return onThread(ownNetwork, 1<<unix.CAP_NET_BIND_SERVICE, f)
}

// ownNetwork moves the calling thread into a new network namespace whose
// low ports are privileged.
func ownNetwork() error {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("unshare the network namespace: %w", err)
	}
	// /proc/sys/net is the calling thread's namespace's.
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_unprivileged_port_start", []byte("1024"), 0); err != nil {
		return fmt.Errorf("privileged ports: %w", err)
	}
	return nil
}

// onThread runs f on an OS thread of its own, first set up by prepare (if
// not nil) and then without the capabilities of drop. Capabilities and
// namespaces belong to a thread: it stays locked to the goroutine, which
// never unlocks it, so the thread ends with the goroutine.
func onThread(prepare func() error, drop uint32, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if prepare != nil {
			if err := prepare(); err != nil {
				errc <- err
				return
			}
		}
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capget: %w", err)
			return
		}
		data[0].Effective &^= drop
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capset: %w", err)
			return
		}
		errc <- f()
	}()
	return <-errc
}
