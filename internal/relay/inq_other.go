//go:build unix && !linux

package relay

import "syscall"

// enableInq reports false: only Linux says what a read left in the socket.
func enableInq(syscall.RawConn) bool { return false }

// readInq is read(2); what is left is never known.
func readInq(fd int, p []byte) (n, left int, err error) {
	n, err = syscall.Read(fd, p)
	return n, -1, err
}
