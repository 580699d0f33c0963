//go:build !unix

package rawsock

import "syscall"

// WriteOnce writes nothing here: the caller's goroutine writes it all.
func WriteOnce(rc syscall.RawConn, p []byte) (int, error) { return 0, nil }
