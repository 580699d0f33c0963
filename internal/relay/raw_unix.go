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

// copyConn copies src to dst until EOF (a nil error) or an error: a TCP
// source through copyRaw, any other through copySmallFirst.
func copyConn(dst io.Writer, src net.Conn) (int64, error) {
	if rc := rawConn(src); rc != nil {
		return copyRaw(dst, rc)
	}
	return copySmallFirst(dst, src)
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
			return written, err // closed or past the deadline: no buffer kept
		}
		switch {
		case rerr != nil:
			err = os.NewSyscallError("read", rerr)
		case n > 0:
			err = writeAll(dst, (*buf)[:n], &written)
		}
		bufPool.Put(buf)
		if err != nil || n <= 0 {
			return written, err // n == 0 with no error is EOF
		}
	}
}
