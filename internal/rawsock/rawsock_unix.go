//go:build unix

// Package rawsock writes to a socket once, without waiting: for the
// receive loops that write a payload straight to a visitor's socket when
// it takes it at once, and leave the rest to a goroutine that may wait.
// It also reads a socket with what the kernel says is left after the read
// (ReadInq): for the readiness callbacks that wait again only when
// nothing is.
package rawsock

import (
	"sync"
	"syscall"
)

// onceWriter is WriteOnce's callback with its arguments and results, kept
// in a pool: a closure handed to syscall.RawConn escapes, and would cost
// an allocation for every write to a visitor.
type onceWriter struct {
	p   []byte
	n   int
	err error
	fn  func(fd uintptr) bool // write, bound once
}

var onceWriters = sync.Pool{New: func() any {
	w := &onceWriter{}
	w.fn = w.write
	return w
}}

func (w *onceWriter) write(fd uintptr) bool {
	for {
		w.n, w.err = syscall.Write(int(fd), w.p)
		if w.err != syscall.EINTR {
			break
		}
	}
	return true // never wait for the socket
}

// WriteOnce writes p to the socket rc once, without waiting: a full
// socket buffer writes nothing, with no error.
func WriteOnce(rc syscall.RawConn, p []byte) (int, error) {
	w := onceWriters.Get().(*onceWriter)
	w.p, w.n, w.err = p, 0, nil
	err := rc.Write(w.fn)
	n, werr := w.n, w.err
	w.p = nil
	onceWriters.Put(w)
	switch {
	case err != nil:
		return 0, err
	case werr == syscall.EAGAIN:
		return 0, nil
	case werr != nil:
		return 0, werr
	}
	return max(n, 0), nil
}
