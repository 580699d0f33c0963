package mux

import (
	"io"
	"net"
	"syscall"

	"github.com/diglett/diglett/internal/rawsock"
)

// Write-through: a relay that copies a stream to a TCP socket registers
// that socket as the stream's sink. While the stream has nothing buffered
// and the relay is not busy writing what it read, the receive loop writes
// a frame's payload straight to the sink with one attempt that never
// waits; what the socket does not take at once goes to the receive buffer
// as before, and everything after it too, until the relay has read and
// written it. The relay is spared a wake-up and a copy per frame.

// SetSink makes the receive path write what the peer sends straight to c
// whenever that keeps the order of the bytes; nil stops it. A sink write
// that fails stops it too: the data is buffered and the relay's own write
// meets the error. SetSink(nil) returns once no write to the old sink is
// under way. The relay that reads the stream must be the only writer of c.
func (st *Stream) SetSink(c *net.TCPConn) {
	var rc syscall.RawConn
	if c != nil {
		if r, err := c.SyscallConn(); err == nil {
			rc = r
		}
	}
	st.sinkMu.Lock()
	st.mu.Lock()
	st.sink = rc
	st.mu.Unlock()
	st.sinkMu.Unlock()
}

// SinkWritten reports the bytes written to sinks so far: they are not
// returned by Read.
func (st *Stream) SinkWritten() int64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.through
}

// canWriteThroughLocked reports whether the next payload may go straight
// to the sink: one is set, nothing is buffered, and the reader is not
// between a Read that returned data and its next Read.
func (st *Stream) canWriteThroughLocked() bool {
	return st.sink != nil && st.buffered == 0 && len(st.chunks) == 0 && !st.outPending
}

// writeThrough reads up to remaining bytes of a payload and writes them to
// the sink in one attempt that does not wait; the rest is buffered. It
// returns the bytes consumed from the connection. Called by the receive
// loop only, without st.mu, once canWriteThroughLocked held.
func (st *Stream) writeThrough(remaining int) (int, error) {
	b := getChunk(remaining)
	m := min(remaining, cap(*b))
	*b = (*b)[:m]
	if _, err := io.ReadFull(st.s.rd, *b); err != nil {
		putChunk(b)
		return 0, readError(err)
	}
	n := 0
	st.sinkMu.Lock()
	if rc := st.sink; rc != nil {
		var err error
		if n, err = rawsock.WriteOnce(rc, *b); err != nil {
			// The relay writes the data itself and meets the error:
			// the stream ends as it does without write-through.
			st.mu.Lock()
			st.sink = nil
			st.mu.Unlock()
		}
	}
	st.sinkMu.Unlock()
	var credit uint32
	wake := false
	st.mu.Lock()
	if n > 0 {
		st.through += int64(n)
		credit = st.creditLocked(uint32(n))
	}
	switch {
	case st.reset || st.readStopped || n == m:
		putChunk(b)
	default:
		// Nothing was buffered (only this loop buffers): the rest
		// starts the buffer.
		st.chunks = append(st.chunks, b)
		st.off = n
		st.buffered += m - n
		wake = true
	}
	st.mu.Unlock()
	if credit > 0 {
		st.s.sendControl(typeWindowUpdate, 0, st.id, credit, false)
	}
	if wake {
		st.readable()
	}
	return m, nil
}
