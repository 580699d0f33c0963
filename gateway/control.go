package gateway

import (
	"errors"
	"io"
	"sync"

	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/mux"
)

// notifyStream is a stream that says when it can be read without waiting:
// the multiplexer's, which carries the sessions over TLS over TCP and over
// WebSocket.
type notifyStream interface {
	// OnReadable calls f whenever a read might find something: data,
	// the end of the stream or of its session.
	OnReadable(f func())
	// ReadNow reads what is there; mux.ErrWouldBlock when nothing is.
	ReadNow(p []byte) (int, error)
}

// controlReader reads an agent's control stream without a goroutine parked
// on it. An idle session used to keep one, waiting for a message that comes
// at login and when the agent stops, with the stack the reads had grown
// (4 KB) for the session's life. Now each notification of the stream
// starts a goroutine, unless one is reading already; it reads what is
// there, handles each whole message in order, and ends once the stream has
// nothing more. The bytes of a message that came in part wait in buf.
type controlReader struct {
	ss   *session
	ctrl transport.Stream
	ns   notifyStream

	mu      sync.Mutex
	running bool // a goroutine reads; it stays set once the session ends
	again   bool // notified while that goroutine read

	buf []byte // owned by the reading goroutine; nil between messages
}

// finish ends the session of a logged-in agent, once its control stream
// ended or the agent broke the protocol.
func (cr *controlReader) finish() {
	cr.ss.closeControl(cr.ctrl)
	cr.ss.end(true)
	cr.ss.srv.wg.Done()
}

// notify is the stream's OnReadable: called by the receive loop, under
// the stream's lock, so it only starts the reader.
func (cr *controlReader) notify() {
	cr.mu.Lock()
	defer cr.mu.Unlock()
	if cr.running {
		cr.again = true
		return
	}
	cr.running = true
	go cr.run()
}

// run reads until the stream has nothing more, then ends; a notification
// that came meanwhile makes it read again, so none is lost.
func (cr *controlReader) run() {
	for {
		cr.mu.Lock()
		cr.again = false
		cr.mu.Unlock()
		if !cr.drain() {
			cr.finish()
			return
		}
		cr.mu.Lock()
		if !cr.again {
			cr.running = false
			cr.mu.Unlock()
			return
		}
		cr.mu.Unlock()
	}
}

// drain reads what the stream has and handles each whole message; it
// reports false when the session is to end: the stream ended, or the agent
// sent what it may not.
func (cr *controlReader) drain() bool {
	var chunk [512]byte
	for {
		n, err := cr.ns.ReadNow(chunk[:])
		cr.buf = append(cr.buf, chunk[:n]...)
		for {
			t, payload, rest, ok, ferr := protocol.SplitFrame(cr.buf)
			if ferr != nil {
				cr.ss.badMessage(cr.ctrl, ferr)
				return false
			}
			if !ok {
				break
			}
			if !cr.ss.controlMessage(cr.ctrl, t, payload) {
				return false
			}
			cr.buf = rest
		}
		if len(cr.buf) == 0 {
			cr.buf = nil
		}
		switch {
		case err == nil:
		case errors.Is(err, mux.ErrWouldBlock):
			return true
		default:
			if len(cr.buf) > 0 && errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			if !errors.Is(err, io.EOF) {
				cr.ss.log.Debug("control stream ended", "err", err)
			}
			return false
		}
	}
}
