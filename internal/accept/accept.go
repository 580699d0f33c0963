// Package accept holds the accept loop step every listener of the gateway
// and the ingress shares: a listener that fails for a while (the process
// is out of file descriptors) is retried with backoff instead of ending.
package accept

import (
	"errors"
	"log/slog"
	"net"
	"syscall"
	"time"
)

// Next waits for ln's next connection. Accept errors that say the
// process or the system is out of a resource (file descriptors, socket
// buffers, memory) are logged at Warn with what and retried after a pause
// that doubles up to a second, until done is closed; any other error is
// returned, a deadline set on ln too.
func Next(ln net.Listener, done <-chan struct{}, log *slog.Logger, what string) (net.Conn, error) {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err == nil {
			return c, nil
		}
		if !exhausted(err) {
			return nil, err
		}
		backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
		log.Warn(what, "err", err, "retry_in", backoff)
		select {
		case <-time.After(backoff):
		case <-done:
			return nil, err
		}
	}
}

// exhausted reports whether err is an accept that failed for want of a
// resource, which a later accept may find again.
func exhausted(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
