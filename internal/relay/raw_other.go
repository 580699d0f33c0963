//go:build !unix

package relay

import (
	"io"
	"net"
	"syscall"
)

// rawConn is nil where reading a socket in its readiness callback is not
// supported: every direction copies through copySmallFirst.
func rawConn(net.Conn) syscall.RawConn { return nil }

func copyRaw(io.Writer, syscall.RawConn) (int64, error) { panic("unreachable") }
