// Package relay copies bytes both ways between two connections, keeping
// TCP half-close: EOF on one side becomes CloseWrite on the other, and an
// error on either side closes both. A direction that waits for data holds
// no copy buffer (on a TCP connection) or a small one (on a stream), so that
// idle connections cost little memory however busy they once were. With
// PipeWith, a half-closed relay whose open direction stands still is ended
// after a bound, so that a peer that left is not waited for forever. A
// source that can write what it receives straight to a TCP destination (a
// multiplexed stream: SetSink) is given the destination, and the counts
// include what it wrote.
package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
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

// sinker is a connection (a multiplexed stream, or a wrapper of one) whose
// receive path can write what arrives straight to the TCP socket the relay
// copies it to, sparing the relay a wake-up and a copy. Bytes written that
// way are not returned by Read: SinkWritten counts them. SetSink(nil)
// stops it, and returns once no write to the socket is under way.
type sinker interface {
	SetSink(dst *net.TCPConn)
	SinkWritten() int64
}

// tryWriter is a destination (a multiplexed stream, or a wrapper of one)
// that can take a write without waiting: TryWrite writes all of p and
// reports true, or writes nothing and reports false (then Write is
// called), or fails as Write would.
type tryWriter interface {
	TryWrite(p []byte) (bool, error)
}

// sinkTo registers dst as src's sink when src can write to one and dst is a
// TCP socket, and returns src's sinker then.
func sinkTo(dst, src net.Conn) sinker {
	tc, ok := dst.(*net.TCPConn)
	if !ok {
		return nil
	}
	sk, ok := src.(sinker)
	if !ok {
		return nil
	}
	sk.SetSink(tc)
	return sk
}

// Options tunes PipeWith. The zero value is what Pipe does.
type Options struct {
	// HalfCloseTimeout bounds a half-closed relay: once one direction has
	// ended with a clean EOF, the other must read something at least this
	// often, and each of its writes must finish within it, or both
	// connections are aborted and PipeWith returns ErrHalfCloseTimeout.
	// A relay open both ways has no bound. Zero: no bound.
	HalfCloseTimeout time.Duration
}

// ErrHalfCloseTimeout is PipeWith's error when it aborted a half-closed
// relay whose open direction stood still for Options.HalfCloseTimeout.
var ErrHalfCloseTimeout = errors.New("relay: half-closed connection idle too long")

// Pipe copies a→b and b→a until both directions have ended, then closes
// both connections. It returns the bytes copied each way and the first
// error that was not a clean EOF or a close caused by the other direction.
func Pipe(a, b net.Conn) (aToB, bToA int64, err error) {
	return PipeWith(a, b, Options{})
}

// PipeWith is Pipe with options. The half-close bound works through the
// connections' read and write deadlines: PipeWith owns them while it runs.
func PipeWith(a, b net.Conn, o Options) (aToB, bToA int64, err error) {
	var hc *halfClose
	if o.HalfCloseTimeout > 0 {
		hc = &halfClose{timeout: o.HalfCloseTimeout}
	}
	var wg sync.WaitGroup
	var errAB error
	wg.Add(1)
	go func() {
		defer wg.Done()
		aToB, errAB = oneWay(b, a, hc)
	}()
	var errBA error
	bToA, errBA = oneWay(a, b, hc)
	wg.Wait()
	a.Close()
	b.Close()
	if errAB != nil {
		return aToB, bToA, errAB
	}
	return aToB, bToA, errBA
}

// oneWay copies src to dst. On EOF it half-closes dst; on an error it closes
// both, which also ends the other direction. With hc, the direction left
// open after an EOF is bounded.
func oneWay(dst, src net.Conn, hc *halfClose) (int64, error) {
	var w io.Writer = dst
	if hc != nil {
		w = &boundedWriter{dst: dst, src: src, hc: hc}
	}
	sk := sinkTo(dst, src)
	n, err := copyConn(w, src, hc)
	if sk != nil {
		sk.SetSink(nil)
		n += sk.SinkWritten()
	}
	if err == nil {
		if hc != nil {
			// The other direction reads dst and writes src.
			hc.start(dst, src)
		}
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
	if hc != nil && hc.on.Load() && isTimeout(err) {
		return n, ErrHalfCloseTimeout
	}
	return n, err
}

// halfClose is the state of a relay's half-close bound, shared by its two
// directions.
type halfClose struct {
	timeout time.Duration
	on      atomic.Bool // a direction has ended with EOF; set under mu
	// mu orders start against the read check of the direction left open
	// (readCheck), which sets the same read deadline until the bound is on.
	mu sync.Mutex
	at time.Time // when start ran; under mu
}

// start bounds the direction still open, which reads r and writes w: the
// one that ended calls it.
func (h *halfClose) start(r, w net.Conn) {
	if sk, ok := r.(sinker); ok {
		// Bytes written past the relay would not move its deadlines.
		sk.SetSink(nil)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.on.Store(true)
	h.at = time.Now()
	d := h.at.Add(h.timeout)
	r.SetReadDeadline(d)
	w.SetWriteDeadline(d)
}

// checkEvery bounds how long a direction waits for readiness right after
// a read without reading again (see readCheck); tests shorten it.
var checkEvery = 10 * time.Second

// readCheck is what lets a direction wait for readiness right after a
// read that left nothing in its TCP source (see copyRaw): the one thing
// such a wait can miss is a reset that arrived with the data, which the
// read does not report and no readiness announces again. The check sets
// the source's read deadline (the relay owns it) checkEvery after the
// first such wait; when it passes, the direction reads once more, which
// finds the reset if there is one. A relay that goes on exchanging data
// reads once more every checkEvery, an idle one has no deadline set. Once
// the half-close bound is on, the bound's deadline is the source's.
type readCheck struct {
	src   net.Conn
	hc    *halfClose // nil: no bound
	armed bool       // the check's deadline was set and has not passed
}

// arm sets the check's deadline unless it is set or the bound is on.
func (c *readCheck) arm() {
	if c.armed {
		return
	}
	if c.hc != nil {
		c.hc.mu.Lock()
		defer c.hc.mu.Unlock()
		if c.hc.on.Load() {
			return
		}
	}
	c.src.SetReadDeadline(time.Now().Add(checkEvery))
	c.armed = true
}

// passed reports whether the deadline error of a read of the source was
// the check's, and clears the deadline then (unless the bound set its
// own): the copy reads on.
func (c *readCheck) passed() bool {
	if !c.armed {
		return false
	}
	c.armed = false
	if c.hc != nil {
		c.hc.mu.Lock()
		defer c.hc.mu.Unlock()
		if c.hc.on.Load() {
			// The bound's deadline replaced the check's when it
			// started, unless the check's had passed by then; the
			// bound's cannot have passed before its timeout.
			return time.Now().Before(c.hc.at.Add(c.hc.timeout))
		}
	}
	c.src.SetReadDeadline(time.Time{})
	return true
}

// boundedWriter is the writer of a direction under a half-close bound:
// once the bound is on, each write must finish within the timeout, and
// each one moves the read deadline of the source on.
type boundedWriter struct {
	dst, src net.Conn
	hc       *halfClose
}

func (w *boundedWriter) Write(p []byte) (int, error) {
	on := w.hc.on.Load()
	if on {
		w.dst.SetWriteDeadline(time.Now().Add(w.hc.timeout))
	}
	n, err := w.dst.Write(p)
	if on {
		// Set after the write, so that a slow write does not eat the
		// time the next read is given.
		w.src.SetReadDeadline(time.Now().Add(w.hc.timeout))
	}
	return n, err
}

// TryWrite passes p to dst without waiting while the bound is off; once
// it is on, every write goes through Write, which moves the deadlines.
func (w *boundedWriter) TryWrite(p []byte) (bool, error) {
	tw, ok := w.dst.(tryWriter)
	if !ok || w.hc.on.Load() {
		return false, nil
	}
	return tw.TryWrite(p)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
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
