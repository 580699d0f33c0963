// Package relay copies bytes both ways between two connections, keeping
// TCP half-close: EOF on one side becomes CloseWrite on the other, and an
// error on either side closes both. A direction that waits for data holds
// no copy buffer (on a TCP connection) or a small one (on a stream), so that
// idle connections cost little memory however busy they once were.
package relay

import (
	"errors"
	"io"
	"net"
	"sync"
)

const (
	// bufSize is the copy buffer of a busy direction.
	bufSize = 32 << 10
	// smallSize is the buffer a direction reading a stream holds while it
	// waits: a read that fills it switches to a bufSize buffer until a
	// read fits in smallSize again.
	smallSize = 4 << 10
)

var (
	bufPool   = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}
	smallPool = sync.Pool{New: func() any { b := make([]byte, smallSize); return &b }}
)

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
	n, err := copyConn(dst, src)
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

// copySmallFirst copies src to dst until EOF (a nil error) or an error,
// reading into a small buffer while the data comes in small pieces and into
// a pooled bufSize one while it comes in bulk.
func copySmallFirst(dst io.Writer, src io.Reader) (int64, error) {
	small := smallPool.Get().(*[]byte)
	defer smallPool.Put(small)
	var big *[]byte
	defer func() {
		if big != nil {
			bufPool.Put(big)
		}
	}()
	var written int64
	for {
		buf := *small
		if big != nil {
			buf = *big
		}
		n, rerr := src.Read(buf)
		if n > 0 {
			if err := writeAll(dst, buf[:n], &written); err != nil {
				return written, err
			}
		}
		switch {
		case big == nil && n == len(buf):
			big = bufPool.Get().(*[]byte)
		case big != nil && n <= smallSize:
			bufPool.Put(big)
			big = nil
		}
		if rerr == io.EOF {
			return written, nil
		}
		if rerr != nil {
			return written, rerr
		}
	}
}

// writeAll writes p to dst, adding what was written to *written.
func writeAll(dst io.Writer, p []byte, written *int64) error {
	n, err := dst.Write(p)
	*written += int64(n)
	if err == nil && n != len(p) {
		err = io.ErrShortWrite
	}
	return err
}
