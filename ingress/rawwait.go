package ingress

// Requests read inside the visitor socket's readiness callback. Between
// requests, a goroutine blocked in a read of a Go socket makes one read
// that finds the socket empty before it waits: every read first clears
// what the poller knew of the socket, then reads, and waits only when the
// read says there was nothing. On a busy keep-alive connection that empty
// read is one in two of the visitor's reads.
//
// After its first request, a plain TCP visitor's connection is served
// inside one syscall.RawConn.Read instead: its callback reads the socket
// with TCP_INQ (the kernel says, with each read, what is left), parses the
// head and forwards a request without a body there, and when the last
// read left the socket empty it returns false, so that the runtime waits
// for the socket's next readiness without reading again. Anything else (a
// request with a body or after a POST, a head in more than one read, a
// request the tap handed back, a deadline, an error, the server's
// shutdown) returns to serve's loop, which goes on as for any connection
// (waitRequest, readHead, forward).
//
// The callback must not read the connection through its net.Conn (the
// callback holds its read lock): fc.br reads through visitorSource, which
// reads the socket itself while fc.rawIn is set.

import (
	"errors"
	"io"
	"net/http"
	"os"
	"syscall"
	"time"

	"github.com/diglett/diglett/internal/rawsock"
)

// errWouldWait: inside the callback, the visitor's socket has nothing to
// read now.
var errWouldWait = errors.New("visitor socket empty")

// visitorSource is what a visitor connection's read buffer reads: the
// connection, or its socket inside the readiness callback.
type visitorSource struct{ fc *fastConn }

func (s visitorSource) Read(p []byte) (int, error) {
	fc := s.fc
	if !fc.rawIn {
		return fc.c.Read(p)
	}
	if fc.rawEmpty {
		return 0, errWouldWait
	}
	fc.fs.rawReads.Add(1)
	n, left, err := rawsock.ReadInq(fc.rawFD, p)
	switch {
	case err == syscall.EAGAIN:
		fc.rawEmpty = true
		return 0, errWouldWait
	case err != nil:
		return 0, os.NewSyscallError("read", err)
	case n == 0:
		return 0, io.EOF
	}
	// A FIN or a reset behind the data leaves a count: read again.
	fc.rawEmpty = left == 0
	fc.c.Scan(p[:n])
	return n, nil
}

// What serveRaw leaves to serve's loop.
const (
	rawGeneral  = iota // wait for the next request as for any connection
	rawForward         // forward the request serveRaw returns
	rawClose           // close the connection
	rawHandover        // hand the connection to the standard server
)

// What one step of the callback found.
const (
	stepOn   = iota // a request was served: the next one
	stepWait        // the socket is empty: wait for it
	stepOut         // return to serve's loop with stepHow
)

// rawMode reports whether the connection can be served inside its
// socket's readiness callback: a plain TCP visitor on Linux.
func (fc *fastConn) rawMode() bool {
	if !fc.rawChecked {
		fc.rawChecked = true
		rc := fc.visitorSocket()
		fc.rawOK = rc != nil && rawsock.EnableInq(rc)
	}
	return fc.rawOK
}

// serveRaw serves the connection's requests inside its socket's readiness
// callback until something needs serve's loop.
func (fc *fastConn) serveRaw() (int, *http.Request) {
	how := rawGeneral
	var r *http.Request
	fc.rawArmed = false
	err := fc.raw.Read(func(fd uintptr) bool {
		fc.rawIn, fc.rawFD, fc.rawEmpty = true, int(fd), false
		defer func() { fc.rawIn = false }()
		for {
			switch step, h, req := fc.rawStep(); step {
			case stepWait:
				return false
			case stepOut:
				how, r = h, req
				return true
			}
		}
	})
	if err != nil {
		// A deadline (the tap's interruption among them), or the
		// connection closed: waitRequest finds out which.
		return rawGeneral, nil
	}
	return how, r
}

// rawStep waits for one request without blocking, as waitRequest does
// (with the wait's deadline armed once, fc.rawArmed), and reads, parses
// and forwards it as serve's loop does.
func (fc *fastConn) rawStep() (int, int, *http.Request) {
	if !fc.rawArmed {
		if fc.lastPOST || fc.fs.closing.Load() {
			return stepOut, rawGeneral, nil
		}
		pending, since := fc.waitStart()
		if h := fc.fs.in.testHookRawWait; h != nil {
			h(fc)
		}
		fc.c.SetReadDeadline(fc.waitDeadline(since, fc.fs.in.cfg.IdleTimeout, pending))
		// The tap may have handed the request back before the deadline
		// replaced its interruption.
		if pending && fc.handedBack() {
			return stepOut, rawGeneral, nil
		}
		fc.rawArmed, fc.rawPending = true, pending
	}
	if _, err := fc.br.Peek(1); err != nil {
		if err == errWouldWait {
			return stepWait, 0, nil
		}
		// The visitor left, or its socket failed: waitRequest ends the
		// request left to the tap and closes.
		fc.rawArmed = false
		return stepOut, rawGeneral, nil
	}
	fc.rawArmed = false
	// The response first, whatever woke the wait.
	if fc.rawPending && !fc.resolve() {
		return stepOut, rawClose, nil
	}
	fc.endedAt = time.Time{}
	fc.idle.Store(false)
	if fc.fs.closing.Load() {
		return stepOut, rawClose, nil
	}
	buf, _ := fc.br.Peek(fc.br.Buffered())
	n := headEnd(buf)
	if n == 0 {
		// A head in more than one read: waitRequest arms the header
		// deadline and readHead reads the rest.
		return stepOut, rawGeneral, nil
	}
	r, v := fc.parseHead(n)
	if v == headHandover {
		return stepOut, rawHandover, nil
	}
	if !fc.admit(r, n) {
		return stepOut, rawClose, nil
	}
	fc.fs.rawServed.Add(1)
	if r.ContentLength != 0 {
		// Its body is read from the visitor, which may wait.
		return stepOut, rawForward, r
	}
	if !fc.forward(r) {
		return stepOut, rawClose, nil
	}
	return stepOn, 0, nil
}
