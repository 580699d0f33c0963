//go:build unix && !linux

package rawsock

import "syscall"

// EnableInq reports false: only Linux says what a read left in the socket.
func EnableInq(syscall.RawConn) bool { return false }

// ReadInq is read(2), made again when interrupted; what is left is never
// known.
func ReadInq(fd int, p []byte) (n, left int, err error) {
	for {
		n, err = syscall.Read(fd, p)
		if err != syscall.EINTR {
			return n, -1, err
		}
	}
}
