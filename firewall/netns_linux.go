package firewall

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

func newBackend(kind string, host *hostChain, netns int) (backend, error) {
	if kind == BackendIPTables {
		return newIPTBackend(netns)
	}
	return &nftBackend{host: host, netns: netns}, nil
}

// inNetNS runs f on an OS thread of its own in the network namespace
// netns (a file descriptor), so that the programs f starts run there too;
// a negative netns runs f on the caller's goroutine.
func inNetNS(netns int, f func() error) error {
	if netns < 0 {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it ends with the goroutine, so no
		// other goroutine ever runs in the namespace.
		runtime.LockOSThread()
		if err := unix.Setns(netns, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		errc <- f()
	}()
	return <-errc
}
