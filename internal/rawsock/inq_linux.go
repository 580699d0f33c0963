package rawsock

import (
	"encoding/binary"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// inqSpace is room for the one control message TCP_INQ adds to a read.
const inqSpace = 32

// EnableInq asks the kernel to report, with every read of the socket, how
// many bytes are left in its receive queue (and a non-zero count once the
// peer's FIN or a reset is pending), and reports whether it will.
func EnableInq(rc syscall.RawConn) bool {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_INQ, 1)
	}); err != nil {
		return false
	}
	return serr == nil
}

// ReadInq reads the socket fd into p as read(2) does, and returns what is
// left to read after it: 0 only when the receive queue is empty and
// neither the peer's FIN nor a reset waits behind the data (the next read
// would find nothing), -1 when the kernel did not say. An interrupted
// read is made again.
func ReadInq(fd int, p []byte) (n, left int, err error) {
	var oob [inqSpace]byte
	iov := unix.Iovec{Base: unsafe.SliceData(p)}
	iov.SetLen(len(p))
	msg := unix.Msghdr{Iov: &iov, Control: &oob[0]}
	msg.SetIovlen(1)
	msg.SetControllen(len(oob))
	var r uintptr
	for {
		var e syscall.Errno
		r, _, e = unix.Syscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), 0)
		if e == 0 {
			break
		}
		if e != syscall.EINTR {
			return 0, -1, e
		}
	}
	n, left = int(r), -1
	b := oob[:msg.Controllen]
	for len(b) > 0 {
		h, data, rest, perr := unix.ParseOneSocketControlMessage(b)
		if perr != nil {
			break
		}
		if h.Level == unix.IPPROTO_TCP && h.Type == unix.TCP_CM_INQ && len(data) >= 4 {
			left = int(int32(binary.NativeEndian.Uint32(data)))
		}
		b = rest
	}
	return n, left, nil
}
