package ingress

// Bounding the waits for a visitor's request body, and telling a
// malformed body from a backend's failure.

import (
	"errors"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// errBodyTimeout ends a visitor's request body that delivered nothing for
// the body read timeout.
var errBodyTimeout = errors.New("request body: no data within the body read timeout")

// longAgo is a read deadline that has passed: it ends a pending read.
var longAgo = time.Unix(1, 0)

// timedBody bounds the time each read of a visitor's request body waits
// for data, not the whole body: a slow upload that keeps moving is never
// cut, a body that stalls ends with errBodyTimeout. A timer per body, armed
// while a read is pending, ends the read through the response's read
// deadline, which works for HTTP/1 (the connection's deadline) and HTTP/2
// (the stream's). Reads go on in the reverse proxy's transport, possibly
// after the handler has returned: the deadline is then no longer touched
// (the HTTP/2 response writer is gone), see finish.
type timedBody struct {
	io.ReadCloser
	rc      *http.ResponseController
	timeout time.Duration
	timer   *time.Timer

	mu       sync.Mutex
	reading  bool      // a read is pending
	deadline time.Time // of the pending read
	expired  bool      // the body timed out
	eof      bool      // the body was read to its end
	done     bool      // the handler has returned: rc is not to be used
}

func newTimedBody(w http.ResponseWriter, body io.ReadCloser, timeout time.Duration) *timedBody {
	b := &timedBody{ReadCloser: body, rc: http.NewResponseController(w), timeout: timeout}
	b.timer = time.AfterFunc(timeout, b.expire)
	b.timer.Stop()
	return b
}

func (b *timedBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	if b.expired {
		b.mu.Unlock()
		return 0, errBodyTimeout
	}
	b.reading = true
	b.deadline = time.Now().Add(b.timeout)
	b.timer.Reset(b.timeout)
	b.mu.Unlock()

	n, err := b.ReadCloser.Read(p)

	b.mu.Lock()
	b.reading = false
	b.timer.Stop()
	if err == io.EOF {
		b.eof = true
	}
	expired := b.expired
	b.mu.Unlock()
	if err != nil && err != io.EOF && (expired || errors.Is(err, os.ErrDeadlineExceeded)) {
		err = errBodyTimeout
	}
	return n, err
}

// expire ends the pending read, if it has waited its whole timeout (a
// timer that fired for an earlier read finds a later deadline).
func (b *timedBody) expire() {
	b.mu.Lock()
	if !b.reading || b.done || time.Now().Before(b.deadline) {
		b.mu.Unlock()
		return
	}
	b.expired = true
	err := b.rc.SetReadDeadline(longAgo) // under mu: never after finish
	b.mu.Unlock()
	if err != nil {
		// A response writer without deadlines (wrapped by a handler in
		// front): closing the body is the best left.
		b.ReadCloser.Close()
	}
}

// finish is called as the handler returns. An HTTP/1 body not read to its
// end is what the server reads (and discards) next, or what the proxy's
// transport is still reading: a deadline bounds that too. HTTP/2 streams
// end with the handler.
func (b *timedBody) finish(http1 bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done = true
	b.timer.Stop()
	if http1 && !b.eof && !b.expired {
		b.rc.SetReadDeadline(time.Now().Add(b.timeout))
	}
}

// timedOut reports whether the body ended for want of data.
func (b *timedBody) timedOut() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.expired
}

// visitorBody records an error reading the visitor's request body (a bad
// chunk size, say), so that it is answered with 400 and not blamed on the
// backend.
type visitorBody struct {
	io.ReadCloser
	failed atomic.Pointer[error] // read by the handler, written by the transport
}

func (b *visitorBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		b.failed.CompareAndSwap(nil, &err)
	}
	return n, err
}

// err is the first error reading the body, if any.
func (b *visitorBody) err() error {
	if p := b.failed.Load(); p != nil {
		return *p
	}
	return nil
}
