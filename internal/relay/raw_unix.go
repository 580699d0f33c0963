//go:build unix

package relay

import (
	"io"
	"net"
	"os"
	"syscall"
)

// rawConn is c's raw socket when c is a TCP connection, else nil.
func rawConn(c net.Conn) syscall.RawConn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// copyRaw copies the socket rc to dst until EOF (a nil error) or an error.
// It reads in the runtime's readiness callback and takes a pooled buffer
// only for the read itself, so that a connection waiting for data holds
// none. The connection's deadlines and Close apply as to its Read.
func copyRaw(dst io.Writer, rc syscall.RawConn) (int64, error) {
	var written int64
	for {
		var (
			buf  *[]byte
			n    int
			rerr error
		)
		err := rc.Read(func(fd uintptr) bool {
			b := bufPool.Get().(*[]byte)
			for {
				n, rerr = syscall.Read(int(fd), *b)
				if rerr != syscall.EINTR {
					break
				}
			}
			if rerr == syscall.EAGAIN {
				bufPool.Put(b)
				return false // wait until the socket is readable
			}
			buf = b
			return true
		})
		if err != nil {
			if buf != nil {
				bufPool.Put(buf)
			}
			return written, err
		}
		if rerr != nil {
			bufPool.Put(buf)
			return written, os.NewSyscallError("read", rerr)
		}
		if n <= 0 {
			bufPool.Put(buf)
			return written, nil // EOF
		}
		werr := writeAll(dst, (*buf)[:n], &written)
		bufPool.Put(buf)
		if werr != nil {
			return written, werr
		}
	}
}
