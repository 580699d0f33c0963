//go:build !unix

package rawsock

import "syscall"

// WriteOnce writes nothing here: the caller's goroutine writes it all.
func WriteOnce(rc syscall.RawConn, p []byte) (int, error) { return 0, nil }

// EnableInq reports false: only Linux says what a read left in the socket.
func EnableInq(syscall.RawConn) bool { return false }

// ReadInq is never called where EnableInq is false.
func ReadInq(fd int, p []byte) (n, left int, err error) { return 0, -1, syscall.EINVAL }
