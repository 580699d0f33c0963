//go:build unix

package mux

import "syscall"

// rawWrite writes p to the socket rc once, without waiting: a full socket
// buffer writes nothing, with no error.
func rawWrite(rc syscall.RawConn, p []byte) (int, error) {
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
