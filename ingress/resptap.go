package ingress

// Write-through of small responses on fast.go's path. Before a request
// goes to the agent, the stream's tap is armed (internal/transport/mux,
// tap.go): when the response's first frame holds all of a common response
// (a head scanResponseHead takes, and the whole body by its length or its
// chunked framing, nothing after it), the session's receive loop rewrites
// its head and writes it to a plain TCP visitor's socket itself, with one
// write that never waits. The connection's goroutine, woken after the
// visitor has the response, writes what the socket did not take and logs
// the request. Anything else (a TLS visitor, a larger or partial
// response, an interim one, one the standard reader must judge) leaves
// the frame to the goroutine, which reads it as before.

import (
	"net/http"
	"syscall"
	"time"

	"github.com/diglett/diglett/internal/rawsock"
)

// tapper is what a stream offers for write-through of a response.
type tapper interface {
	SetTap(f func(p []byte) bool, then func()) bool
	ClearTap() bool
}

// respTap is a visitor connection's write-through of one response.
type respTap struct {
	fn         func([]byte) bool // fc.takeResponse, bound once
	then       func()            // fc.tapThen, bound once
	method     string
	closeAfter bool // the visitor asked to close after this response
	// Set by takeResponse, read after ClearTap.
	h    respHead
	n    int64  // body bytes
	buf  []byte // the response for the visitor, from headBufs
	left []byte // what of buf the socket did not take at once
	err  error  // the socket's write failed
}

// visitorSocket returns the raw socket of a plain TCP visitor, or nil.
func (fc *fastConn) visitorSocket() syscall.RawConn {
	if !fc.rawKnown {
		fc.rawKnown = true
		if sc, ok := fc.c.Conn.(syscall.Conn); ok {
			if rc, err := sc.SyscallConn(); err == nil {
				fc.raw = rc
			}
		}
	}
	return fc.raw
}

// armTap arms st's tap for the response to r, when it can be; with
// detach, the tap may end the request (detach.go).
func (fc *fastConn) armTap(st *fastStream, r *http.Request, detach bool) tapper {
	t, ok := st.Conn.(tapper)
	if !ok || st.br.Buffered() > 0 || fc.visitorSocket() == nil {
		return nil
	}
	if fc.tap.fn == nil {
		fc.tap.fn, fc.tap.then = fc.takeResponse, fc.tapThen
	}
	fc.tap.method, fc.tap.closeAfter = r.Method, r.Close
	fc.tap.n, fc.tap.buf, fc.tap.left, fc.tap.err = 0, nil, nil, nil
	var then func()
	if detach {
		fc.setState(pSending)
		then = fc.tap.then
	}
	if !t.SetTap(fc.tap.fn, then) {
		fc.setState(pOff)
		return nil
	}
	return t
}

// takeResponse is the tap: it takes p if p is one whole common response,
// and writes it to the visitor. It runs in the session's receive loop.
func (fc *fastConn) takeResponse(p []byte) bool {
	if fc.pstate.Load() == pOff {
		return p != nil && fc.writeResponse(p)
	}
	return fc.takeDetached(p)
}

// writeResponse takes p if p is one whole common response, and writes it
// to the visitor's socket with one write that does not wait.
func (fc *fastConn) writeResponse(p []byte) bool {
	t := &fc.tap
	end := crlfEnd(p)
	if end < 0 {
		return false
	}
	out := headBufsGet()
	h, b, ok := parseResponseHead(p[:end], t.method, out)
	body := p[end:]
	switch {
	case !ok:
	case h.chunked:
		var s chunkScanner
		k, err := s.scan(body)
		ok = err == nil && s.done() && k == len(body)
		t.n = s.data
	case h.length == int64(len(body)):
		t.n = h.length
	default:
		ok = false // a body that ends with the stream, or not all here
	}
	if !ok {
		headBufsPut(out)
		return false
	}
	if t.closeAfter {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "\r\n"...)
	b = append(b, body...)
	t.h, t.buf = h, b
	fc.fs.tapped.Add(1)
	n, err := rawsock.WriteOnce(fc.raw, b)
	t.left, t.err = b[n:], err
	return true
}

// crlfEnd is crlfHeadEnd on a slice: the length of the head at the front
// of p through its empty line, or -1 when p holds no whole head or a line
// ends in a bare LF.
func crlfEnd(p []byte) int {
	if end, _ := scanCRLFLines(p, 0); end != 0 {
		return end
	}
	return -1
}

// tapped ends an exchange whose response the tap took: it writes what the
// visitor's socket did not take at once, records the response, and keeps
// the stream if it can carry another request. It returns exchange's
// results.
func (fc *fastConn) tapped(st *fastStream, r *http.Request, x *exchange, body *bodyState) (keep, stale bool, err error) {
	t := &fc.tap
	st.SetReadDeadline(time.Time{})
	x.rec.status = t.h.code
	x.rec.written = t.n
	werr := t.err
	if werr == nil && len(t.left) > 0 {
		fc.fs.tapLeft.Add(1)
		_, werr = fc.c.Write(t.left)
	}
	headBufsPut(t.buf)
	t.buf, t.left, t.err = nil, nil, nil
	if werr != nil {
		fc.fs.in.log.Debug("response cut", "visitor", r.RemoteAddr, "host", r.Host, "err", werr)
	}
	closeAfter := t.closeAfter || werr != nil || (body != nil && !body.read.Load())
	if !t.h.close && !closeAfter && st.br.Buffered() == 0 {
		st.m.putIdle(st)
	} else {
		st.close(true)
	}
	return !closeAfter, false, nil
}
