package mux

import "io"

// A tap: a one-shot look, in the receive loop, at the next data frame of
// a stream, for a reader that can finish a whole small message there
// instead of being woken to read it (the HTTP ingress writes a complete
// response straight to its visitor). The tap is given that frame's
// payload when nothing is buffered before it and it fits in MaxTapSize,
// and takes it or leaves it; either way, it is disarmed by that frame, so
// it never sees the middle of a message. A payload taken is not
// returned by Read: Reads return ErrTapped instead, until ClearTap. A
// payload left is buffered as any other. When the stream's next event
// is anything else (a larger frame, the peer's FIN or reset, a local
// Close or Reset, the session's end), the tap is called once with nil
// and disarmed, so that an owner waiting for nothing but the tap can
// learn it must read the stream after all.

// MaxTapSize is the largest payload given to a tap.
const MaxTapSize = 4 << 10

// SetTap arms f for the next data frame the stream receives, replacing a
// tap armed before. f runs in the session's receive loop: it must not
// wait, nor keep p after it returns, nor call the stream's methods; it
// reports whether it took p (a call with nil is told of another event,
// and its result is ignored). When f took p and then is not nil, the
// owner ends its work in the receive loop: the take is not recorded for
// Read (no ErrTapped, and ClearTap reports false), and then is called
// right after f, with the same guarantee that ClearTap waits for it; then
// may use the stream, but not call ClearTap. SetTap fails (false) when
// data is already buffered or the stream can no longer receive any.
func (st *Stream) SetTap(f func(p []byte) bool, then func()) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.buffered > 0 || len(st.chunks) > 0 || st.reset || st.readStopped || st.finRecv || st.ended {
		return false
	}
	st.tap, st.tapThen, st.tapped = f, then, false
	return true
}

// ClearTap disarms the tap, waiting for a call to it under way, and
// reports whether it took a payload (and clears that too: Read no longer
// returns ErrTapped).
func (st *Stream) ClearTap() (took bool) {
	st.tapMu.Lock()
	st.mu.Lock()
	st.tap, st.tapThen = nil, nil
	took, st.tapped = st.tapped, false
	st.mu.Unlock()
	st.tapMu.Unlock()
	return took
}

// tapGone calls the tap, if it is still armed, with nil, and disarms it:
// the stream's next event is not a payload for it. Called without st.mu,
// by a caller that saw the tap armed.
func (st *Stream) tapGone() {
	st.tapMu.Lock()
	st.mu.Lock()
	f := st.tap
	st.tap, st.tapThen = nil, nil
	st.mu.Unlock()
	if f != nil {
		f(nil)
	}
	st.tapMu.Unlock()
}

// receiveTapped reads a payload of n bytes for the tap and gives it to
// the tap if it is still armed, or buffers it. Called by the receive loop
// only, without st.mu, once the tap was seen armed with nothing buffered.
func (st *Stream) receiveTapped(n int) error {
	b := getChunk(n)
	*b = (*b)[:n]
	if _, err := io.ReadFull(st.s.rd, *b); err != nil {
		putChunk(b)
		return readError(err)
	}
	st.tapMu.Lock()
	st.mu.Lock()
	f, then := st.tap, st.tapThen
	st.tap, st.tapThen = nil, nil
	gone := st.reset || st.readStopped
	st.mu.Unlock()
	took := f != nil && !gone && f(*b)
	var credit uint32
	st.mu.Lock()
	switch {
	case took:
		st.tapped = then == nil
		credit = st.creditLocked(uint32(n))
		putChunk(b)
	case st.reset || st.readStopped:
		putChunk(b)
	default:
		// Only this loop buffers, and it buffered nothing since it saw
		// the tap armed: the payload starts the buffer.
		st.chunks = append(st.chunks, b)
		st.off = 0
		st.buffered += n
	}
	st.mu.Unlock()
	ended := took && then != nil
	if ended {
		then()
	}
	st.tapMu.Unlock()
	if credit > 0 {
		st.s.sendControl(typeWindowUpdate, 0, st.id, credit, false)
	}
	if !ended {
		st.readable()
	}
	return nil
}
