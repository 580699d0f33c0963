//go:build unix

// Package rawsock writes to a socket once, without waiting: for the
// receive loops that write a payload straight to a visitor's socket when
// it takes it at once, and leave the rest to a goroutine that may wait.
// It also reads a socket with what the kernel says is left after the read
// (ReadInq): for the readiness callbacks that wait again only when
// nothing is.
package rawsock

import "syscall"

// WriteOnce writes p to the socket rc once, without waiting: a full
// socket buffer writes nothing, with no error.
func WriteOnce(rc syscall.RawConn, p []byte) (int, error) {
	var (
		n    int
		werr error
	)
	err := rc.Write(func(fd uintptr) bool {
		for {
			n, werr = syscall.Write(int(fd), p)
			if werr != syscall.EINTR {
				break
			}
		}
		return true // never wait for the socket
	})
	switch {
	case err != nil:
		return 0, err
	case werr == syscall.EAGAIN:
		return 0, nil
	case werr != nil:
		return 0, werr
	}
	return max(n, 0), nil
}
