//go:build unix

package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/diglett/diglett/internal/rawsock"
)

// testHookRead, when a test sets it, hears of every read copyRaw makes.
var testHookRead func(n int, err error)

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
// source through copyRaw, any other through copySmallFirst. hc is the
// relay's half-close bound, or nil.
func copyConn(dst io.Writer, src net.Conn, hc *halfClose) (int64, error) {
	if rc := rawConn(src); rc != nil {
		return copyRaw(dst, rc, &readCheck{src: src, hc: hc})
	}
	return copySmallFirst(dst, src)
}

// copyRaw copies the socket rc to dst until EOF (a nil error) or an error.
// It reads in the runtime's readiness callback and takes a pooled buffer
// only for the read itself, so that a connection waiting for data holds
// none. The connection's deadlines and Close apply as to its Read.
//
// When dst can take a write without waiting (a multiplexed stream with
// window and room: tryWriter) and the kernel says, with each read, what is
// left in the socket (TCP_INQ), what was read is passed on inside the
// callback, and once a read has left nothing behind (no data, no pending
// FIN or reset) the callback asks to wait for readiness at once. Leaving
// the callback and reading again would first meet the empty socket: one
// system call per wake-up that finds nothing, as costly as the read of the
// data itself. A short read alone does not say the socket is empty: the
// peer's FIN may wait behind the data, and no readiness would announce it.
// Nor does TCP_INQ report a reset that came with the data: check makes
// such a wait read again within a bound. Without check (nil), every read
// is passed on outside the callback.
func copyRaw(dst io.Writer, rc syscall.RawConn, check *readCheck) (int64, error) {
	tw, _ := dst.(tryWriter)
	if tw != nil && (check == nil || !rawsock.EnableInq(rc)) {
		tw = nil
	}
	var written int64
	for {
		var (
			buf  *[]byte
			n    int
			left int
			rerr error
			werr error
		)
		err := rc.Read(func(fd uintptr) bool {
			b := bufPool.Get().(*[]byte)
			for {
				n, left, rerr = readSocket(int(fd), *b, tw != nil)
				if testHookRead != nil {
					testHookRead(n, rerr)
				}
				if rerr == syscall.EAGAIN {
					bufPool.Put(b)
					return false // wait until the socket is readable
				}
				if tw == nil || rerr != nil || n <= 0 {
					break
				}
				var ok bool
				if ok, werr = tw.TryWrite((*b)[:n]); !ok {
					break // dst must wait, or failed: written below
				}
				written += int64(n)
				if left == 0 {
					// Nothing is left: what comes next is announced
					// by the poller.
					bufPool.Put(b)
					check.arm()
					return false
				}
			}
			buf = b
			return true
		})
		if err != nil {
			if check != nil && errors.Is(err, os.ErrDeadlineExceeded) && check.passed() {
				continue // the check's deadline: read once more
			}
			return written, err // closed or past the deadline: no buffer kept
		}
		switch {
		case werr != nil:
			err = werr
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

// readSocket reads fd into p, again when interrupted; with inq, through
// rawsock.ReadInq, which says what is left (else left is -1).
func readSocket(fd int, p []byte, inq bool) (n, left int, err error) {
	if inq {
		return rawsock.ReadInq(fd, p)
	}
	for {
		n, err = syscall.Read(fd, p)
		if err != syscall.EINTR {
			return n, -1, err
		}
	}
}
