//go:build !unix

package relay

import (
	"io"
	"net"
)

// copyConn copies src to dst until EOF (a nil error) or an error. Reading
// a socket in its readiness callback is done on unix only: here every
// direction copies through copySmallFirst.
func copyConn(dst io.Writer, src net.Conn, _ *halfClose) (int64, error) {
	return copySmallFirst(dst, src)
}
