// Package relay copies bytes both ways between two connections, keeping
// TCP half-close: EOF on one side becomes CloseWrite on the other, and an
// error on either side closes both.
package relay

import (
	"errors"
	"io"
	"net"
	"sync"
)

const bufSize = 32 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

type closeWriter interface{ CloseWrite() error }

// Pipe copies a→b and b→a until both directions have ended, then closes
// both connections. It returns the bytes copied each way and the first
// error that was not a clean EOF or a close caused by the other direction.
func Pipe(a, b net.Conn) (aToB, bToA int64, err error) {
	var wg sync.WaitGroup
	var errAB error
	wg.Add(1)
	go func() {
		defer wg.Done()
		aToB, errAB = oneWay(b, a)
	}()
	var errBA error
	bToA, errBA = oneWay(a, b)
	wg.Wait()
	a.Close()
	b.Close()
	if errAB != nil {
		return aToB, bToA, errAB
	}
	return aToB, bToA, errBA
}

// oneWay copies src to dst. On EOF it half-closes dst; on an error it closes
// both, which also ends the other direction.
func oneWay(dst, src net.Conn) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	n, err := io.CopyBuffer(writerOnly{dst}, readerOnly{src}, *bp)
	bufPool.Put(bp)
	if err == nil {
		if cw, ok := dst.(closeWriter); ok {
			if cw.CloseWrite() == nil {
				return n, nil
			}
		}
		dst.Close()
		return n, nil
	}
	abort(src)
	abort(dst)
	if errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) {
		// Closed by the other direction or by the caller.
		return n, nil
	}
	return n, err
}

// abort closes c the way a failed TCP connection ends: with a reset, so the
// other side does not mistake the failure for a clean end of data.
func abort(c net.Conn) {
	switch x := c.(type) {
	case interface{ Reset() error }:
		x.Reset()
	case *net.TCPConn:
		x.SetLinger(0)
		x.Close()
	default:
		c.Close()
	}
}

// readerOnly and writerOnly hide ReadFrom/WriteTo so io.CopyBuffer uses the
// pooled buffer instead of allocating its own.
type readerOnly struct{ io.Reader }
type writerOnly struct{ io.Writer }
