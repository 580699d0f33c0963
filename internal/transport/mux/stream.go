package mux

import (
	"io"
	"math"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Stream is one bidirectional byte stream of a session. It is a net.Conn
// with half-close (CloseWrite) and reset.
type Stream struct {
	s       *Session
	id      uint32
	inbound bool

	// waits are the channels waiting calls sleep on; nil until one
	// waits (streamWaits).
	waits atomic.Pointer[streamWaits]

	mu sync.Mutex
	// Receive buffer: pooled chunks; off is the read offset in chunks[0].
	// While filling, the receive loop writes past the end of the last
	// chunk outside mu: that chunk stays put.
	chunks   []*[]byte
	off      int
	buffered int
	filling  bool
	// Flow control.
	recvWindow uint32 // the window granted, growing up to MaxStreamWindow
	recvAvail  uint32 // bytes the peer may still send
	unsent     uint32 // bytes read and not yet credited back
	lastCredit time.Time
	sendWindow uint32
	// State.
	synPending  bool // opened here, not acknowledged yet
	synQueued   bool // opened here, the SYN perhaps not written yet
	finSent     bool // no more writes (FIN or RST sent)
	finRecv     bool
	readStopped bool // Close was called
	reset       bool
	ended       bool // the session ended
	rdl, wdl    time.Time
	readWaiters int // Reads waiting on waits.read
	waiting     int // calls holding waits to wait on (holdWaitsLocked)
	// onReadable, if set, is called wherever a waiting Read is woken
	// (OnReadable).
	onReadable atomic.Pointer[func()]
	// Write-through (sink.go): sink is set under sinkMu and mu, and a
	// write to it is made under sinkMu.
	sinkMu     sync.Mutex
	sink       syscall.RawConn
	through    int64 // bytes written to sinks
	outPending bool  // a Read returned data and the next Read has not begun
	// Tap (tap.go): set under mu; called, and tapped set, under tapMu.
	tapMu   sync.Mutex
	tap     func([]byte) bool
	tapThen func() // called after the tap took a payload
	tapped  bool   // the tap took a payload: Reads say so until ClearTap
}

var _ net.Conn = (*Stream)(nil)

func newStream(s *Session, id uint32, inbound bool) *Stream {
	return &Stream{
		s:          s,
		id:         id,
		inbound:    inbound,
		recvWindow: InitialWindow,
		recvAvail:  InitialWindow,
		sendWindow: InitialWindow,
		lastCredit: time.Now(),
	}
}

// streamWaits are the channels a stream's waiting calls sleep on. The
// first call that waits makes them: a stream read only as notified and
// written within its window (an idle session's control stream) never
// holds them. A call signals after the change it signals for, made under
// the stream's lock, and a waiter takes the channels while it holds the
// lock under which it found nothing to do: either it sees the change, or
// the signal finds the channels. Each holds one wake-up at most.
type streamWaits struct {
	read     chan struct{} // data, EOF, reset, deadline change
	write    chan struct{} // window, reset, close
	deadline chan struct{} // write deadline changed
}

// holdWaitsLocked returns the stream's wait channels, made on first use,
// to a call about to wait on them; it counts as waiting until it calls
// releaseWaitsLocked. Called under st.mu.
func (st *Stream) holdWaitsLocked() *streamWaits {
	st.waiting++
	w := st.waits.Load()
	if w == nil {
		w = &streamWaits{
			read:     make(chan struct{}, 1),
			write:    make(chan struct{}, 1),
			deadline: make(chan struct{}, 1),
		}
		st.waits.Store(w)
	}
	return w
}

// releaseWaitsLocked ends a wait that holdWaitsLocked began. Called under
// st.mu.
func (st *Stream) releaseWaitsLocked() { st.waiting-- }

// wakeWriter wakes a Write waiting for window, and a writer waiting for
// room if deadline is set.
func (st *Stream) wakeWriter(deadline bool) {
	if w := st.waits.Load(); w != nil {
		signal(w.write)
		if deadline {
			signal(w.deadline)
		}
	}
}

// ID is the stream's id on the wire.
func (st *Stream) ID() uint32 { return st.id }

// LocalAddr is the session's local address.
func (st *Stream) LocalAddr() net.Addr { return st.s.LocalAddr() }

// RemoteAddr is the session's remote address.
func (st *Stream) RemoteAddr() net.Addr { return st.s.RemoteAddr() }

// Read reads data the peer sent; io.EOF after the peer's CloseWrite and
// everything before it.
func (st *Stream) Read(p []byte) (int, error) { return st.read(p, true) }

// ReadNow is Read without the wait: where Read would wait for the peer, it
// returns ErrWouldBlock.
func (st *Stream) ReadNow(p []byte) (int, error) { return st.read(p, false) }

// OnReadable makes the stream call f whenever a Read that waits would be
// woken: data came, the stream or its session ended, a deadline changed.
// It may be called when a Read still finds nothing (a reader that does
// not wait reads with ReadNow). It is called at once if data or the end
// is already there. f is called by the receive loop and by calls on the
// stream or its session, often under the stream's lock: it must return
// at once and must not call the stream.
//
// A stream read as notified from now on gives back the wait channels its
// blocking calls made, if none waits: a session's control stream, read
// with Read during the login, holds none once its session is idle. A
// later call that waits makes them again.
func (st *Stream) OnReadable(f func()) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.onReadable.Store(&f)
	if st.waiting == 0 {
		st.waits.Store(nil)
	}
	if st.buffered > 0 || st.finRecv || st.reset || st.ended || st.readStopped || st.tapped {
		f()
	}
}

// readable wakes the stream's reader.
func (st *Stream) readable() {
	if w := st.waits.Load(); w != nil {
		signal(w.read)
	}
	if f := st.onReadable.Load(); f != nil {
		(*f)()
	}
}

func (st *Stream) read(p []byte, wait bool) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	st.mu.Lock()
	// The caller is done with what the last Read returned: write-through
	// may go on (sink.go).
	st.outPending = false
	for {
		if st.tapped {
			st.mu.Unlock()
			return 0, ErrTapped
		}
		if st.buffered > 0 {
			n := st.copyOutLocked(p)
			credit := st.creditLocked(uint32(n))
			st.outPending = true
			st.mu.Unlock()
			if credit > 0 {
				// A failure here ends the session; the next call says so.
				st.s.sendControl(typeWindowUpdate, 0, st.id, credit, true)
			}
			return n, nil
		}
		switch {
		case st.reset:
			st.mu.Unlock()
			return 0, ErrStreamReset
		case st.readStopped:
			st.mu.Unlock()
			return 0, ErrStreamClosed
		case st.finRecv:
			st.mu.Unlock()
			return 0, io.EOF
		case st.ended:
			st.mu.Unlock()
			return 0, ErrSessionClosed
		}
		dl := st.rdl
		if !dl.IsZero() && !time.Now().Before(dl) {
			st.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		}
		if !wait {
			st.mu.Unlock()
			return 0, ErrWouldBlock
		}
		syn := st.synQueued
		st.synQueued = false
		st.readWaiters++
		w := st.holdWaitsLocked()
		st.mu.Unlock()
		if syn {
			// The peer cannot answer a stream it does not know of.
			st.s.flushNow()
		}
		waitFor(w.read, nil, dl, st.s.done)
		st.mu.Lock()
		st.readWaiters--
		st.releaseWaitsLocked()
	}
}

func (st *Stream) copyOutLocked(p []byte) int {
	n := 0
	for n < len(p) && st.buffered > 0 {
		c := *st.chunks[0]
		k := copy(p[n:], c[st.off:])
		st.off += k
		n += k
		st.buffered -= k
		if st.off == len(c) {
			if len(st.chunks) == 1 && st.filling {
				break
			}
			putChunk(st.chunks[0])
			st.chunks[0] = nil
			st.chunks = st.chunks[1:]
			st.off = 0
		}
	}
	if len(st.chunks) == 0 {
		st.chunks = nil
	}
	return n
}

// creditLocked accounts n bytes read and returns the window update to
// send, if any: once half the window was read. A window read within
// about two round trips (the reader keeps up, the window is what limits
// the stream) doubles, up to MaxStreamWindow.
func (st *Stream) creditLocked(n uint32) uint32 {
	st.unsent += n
	if st.finRecv || st.reset || st.ended || st.unsent < st.recvWindow/2 {
		return 0
	}
	delta := st.unsent
	now := time.Now()
	if maxWin := uint32(st.s.cfg.MaxStreamWindow); st.recvWindow < maxWin {
		rtt := max(st.s.RTT(), time.Millisecond)
		if now.Sub(st.lastCredit) < 2*rtt {
			grown := min(st.recvWindow*2, maxWin)
			delta += grown - st.recvWindow
			st.recvWindow = grown
		}
	}
	st.lastCredit = now
	st.unsent = 0
	st.recvAvail += delta
	return delta
}

// releaseLocked gives the receive buffer back to the pool (but the chunk
// the receive loop is filling: it releases that one itself).
func (st *Stream) releaseLocked() {
	keep := 0
	for i, c := range st.chunks {
		if st.filling && i == len(st.chunks)-1 {
			keep = 1
			break
		}
		putChunk(c)
		st.chunks[i] = nil
	}
	if keep == 1 {
		st.chunks = st.chunks[len(st.chunks)-1:]
	} else {
		st.chunks = nil
	}
	st.off = 0
	st.buffered = 0
}

// receive reads a data frame's payload of length bytes into the buffer.
// Called by the receive loop only.
func (st *Stream) receive(length uint32) error {
	s := st.s
	st.mu.Lock()
	if length > st.recvAvail {
		st.mu.Unlock()
		return protocolError("stream %d: %d bytes over a window of %d", st.id, length, st.recvAvail)
	}
	st.recvAvail -= length
	st.mu.Unlock()
	remaining := int(length)
	wake := false
	for remaining > 0 {
		st.mu.Lock()
		if st.reset || st.readStopped || st.ended || st.finRecv {
			resetIt := st.readStopped && !st.reset && !st.ended
			st.mu.Unlock()
			if resetIt {
				// Closed here, and the peer goes on sending: reset
				// the stream rather than leave the peer blocked
				// once its window is used.
				st.resetLocal(false)
			}
			if wake {
				st.readable()
			}
			return s.discard(uint32(remaining))
		}
		if st.tap != nil {
			st.mu.Unlock()
			if remaining == int(length) && remaining <= MaxTapSize && st.buffered == 0 && len(st.chunks) == 0 {
				return st.receiveTapped(remaining)
			}
			// Not a payload for the tap: it hears so, and is disarmed.
			st.tapGone()
			continue
		}
		if st.canWriteThroughLocked() {
			st.mu.Unlock()
			m, err := st.writeThrough(remaining)
			if err != nil {
				return err
			}
			remaining -= m
			continue
		}
		wake = true
		var tail *[]byte
		if k := len(st.chunks); k > 0 {
			tail = st.chunks[k-1]
		}
		if tail == nil || len(*tail) == cap(*tail) {
			tail = getChunk(remaining)
			st.chunks = append(st.chunks, tail)
		}
		l := len(*tail)
		m := min(remaining, cap(*tail)-l)
		dst := (*tail)[l : l+m]
		st.filling = true
		st.mu.Unlock()
		_, err := io.ReadFull(s.rd, dst)
		st.mu.Lock()
		st.filling = false
		if err != nil {
			st.mu.Unlock()
			return readError(err)
		}
		if st.reset || st.readStopped {
			st.releaseLocked()
		} else {
			*tail = (*tail)[:l+m]
			st.buffered += m
		}
		st.mu.Unlock()
		remaining -= m
	}
	if wake {
		st.readable()
	}
	return nil
}

// Write writes p as data frames, within the window the peer granted.
func (st *Stream) Write(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		st.mu.Lock()
		for {
			if err := st.writeErrLocked(); err != nil {
				st.mu.Unlock()
				return total, err
			}
			if st.sendWindow > 0 {
				break
			}
			dl := st.wdl
			if !dl.IsZero() && !time.Now().Before(dl) {
				st.mu.Unlock()
				return total, os.ErrDeadlineExceeded
			}
			w := st.holdWaitsLocked()
			st.mu.Unlock()
			waitFor(w.write, w.deadline, dl, st.s.done)
			st.mu.Lock()
			st.releaseWaitsLocked()
		}
		n := min(len(p), int(st.sendWindow))
		st.sendWindow -= uint32(n)
		st.mu.Unlock()
		k, err := st.s.writeData(st, p[:n], 0)
		total += k
		if k < n {
			st.mu.Lock()
			st.sendWindow += uint32(n - k)
			st.mu.Unlock()
		}
		if err != nil {
			return total, err
		}
		p = p[n:]
	}
	return total, nil
}

// TryWrite writes all of p if it can without waiting, for the peer's
// window or for room in the session's pending output, and reports whether
// it did; with false and no error nothing was written, and Write may be
// called with p as usual. Like Write, it may write the session's pending
// output to the connection itself when no writer is active, which the
// session's write timeout bounds. A relay reading a socket in the
// runtime's readiness callback uses it to pass on what it read without
// leaving the callback, so that its next wait needs no read that finds
// the socket empty.
func (st *Stream) TryWrite(p []byte) (bool, error) {
	if len(p) == 0 {
		return true, nil
	}
	st.mu.Lock()
	if err := st.writeErrLocked(); err != nil {
		st.mu.Unlock()
		return false, err
	}
	if int64(st.sendWindow) < int64(len(p)) {
		st.mu.Unlock()
		return false, nil
	}
	st.sendWindow -= uint32(len(p))
	st.mu.Unlock()
	ok, err := st.s.tryWriteData(st, p)
	if !ok {
		st.mu.Lock()
		st.sendWindow += uint32(len(p))
		st.mu.Unlock()
	}
	return ok, err
}

func (st *Stream) writeErrLocked() error {
	switch {
	case st.reset:
		return ErrStreamReset
	case st.finSent:
		return ErrStreamClosed
	case st.ended:
		return ErrSessionClosed
	}
	return nil
}

// writeDeadline is the stream's write deadline.
// holdWriteDeadline is the write deadline, and the wait channels whose
// deadline channel a change of it is signalled on from now, held until
// releaseWaits.
func (st *Stream) holdWriteDeadline() (time.Time, *streamWaits) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.wdl, st.holdWaitsLocked()
}

// releaseWaits is releaseWaitsLocked, taking the lock.
func (st *Stream) releaseWaits() {
	st.mu.Lock()
	st.releaseWaitsLocked()
	st.mu.Unlock()
}

// CloseWrite sends FIN: the peer reads EOF after the data written before.
// Reads go on.
func (st *Stream) CloseWrite() error {
	st.mu.Lock()
	if st.finSent || st.reset {
		st.mu.Unlock()
		return nil
	}
	if st.ended {
		st.mu.Unlock()
		return ErrSessionClosed
	}
	st.finSent = true
	forget := st.finRecv
	st.mu.Unlock()
	st.wakeWriter(false)
	err := st.s.sendControl(typeWindowUpdate, flagFIN, st.id, 0, true)
	if forget {
		st.s.forget(st)
	}
	return err
}

// Close sends FIN and stops reading: what the peer still sends is
// dropped, and a peer that goes on sending gets a reset.
func (st *Stream) Close() error {
	st.mu.Lock()
	if st.readStopped {
		st.mu.Unlock()
		return nil
	}
	st.readStopped = true
	st.releaseLocked()
	sendFIN := !st.finSent && !st.reset && !st.ended
	st.finSent = true
	forget := st.finRecv || st.reset || st.ended
	armed := st.tap != nil // told below, without the lock
	st.mu.Unlock()
	st.readable()
	st.wakeWriter(false)
	if armed {
		st.tapGone()
	}
	var err error
	if sendFIN {
		err = st.s.sendControl(typeWindowUpdate, flagFIN, st.id, 0, true)
	}
	if forget {
		st.s.forget(st)
	}
	return err
}

// Reset abandons the stream both ways: the peer's reads and writes fail
// at once.
func (st *Stream) Reset() error {
	st.resetLocal(true)
	return nil
}

// resetLocal resets the stream from this side; wait says whether the
// caller may write the RST itself.
func (st *Stream) resetLocal(wait bool) {
	st.mu.Lock()
	if st.reset || st.ended || (st.finSent && st.finRecv) {
		st.mu.Unlock()
		return
	}
	st.reset = true
	st.finSent = true
	st.endResetLocked(func() { st.s.sendControl(typeWindowUpdate, flagRST, st.id, 0, wait) })
}

// endResetLocked finishes a reset, ours or the peer's: the buffers go,
// blocked calls wake, send (if not nil) sends our RST, and the session
// forgets the stream. Called with st.mu held; returns with it released.
func (st *Stream) endResetLocked(send func()) {
	st.releaseLocked()
	syn := st.synPending
	st.synPending = false
	armed := st.tap != nil // told below, without the lock
	st.mu.Unlock()
	st.readable()
	st.wakeWriter(false)
	if armed {
		st.tapGone()
	}
	if send != nil {
		send()
	}
	st.s.forget(st)
	if syn {
		st.s.releaseSyn()
	}
}

// peerReset handles the peer's RST.
func (st *Stream) peerReset() {
	st.mu.Lock()
	if st.reset {
		st.mu.Unlock()
		return
	}
	st.reset = true
	st.endResetLocked(nil)
}

// peerFIN handles the peer's FIN.
func (st *Stream) peerFIN() {
	st.mu.Lock()
	if st.finRecv {
		st.mu.Unlock()
		return
	}
	st.finRecv = true
	forget := st.finSent
	if st.readStopped {
		st.releaseLocked()
	}
	armed := st.tap != nil // told below, without the lock
	st.mu.Unlock()
	st.readable()
	if armed {
		st.tapGone()
	}
	if forget {
		st.s.forget(st)
	}
}

// acked handles the peer's ACK of a stream opened here.
func (st *Stream) acked() {
	st.mu.Lock()
	syn := st.synPending
	st.synPending = false
	st.mu.Unlock()
	if syn {
		st.s.releaseSyn()
	}
}

// acknowledge sends the ACK of an accepted stream.
func (st *Stream) acknowledge() {
	st.mu.Lock()
	skip := st.reset || st.ended
	st.mu.Unlock()
	if !skip {
		// Only the opener's count of streams awaiting acknowledgement
		// waits for it: it may go with the stream's first frame.
		st.s.sendLazy(typeWindowUpdate, flagACK, st.id, 0)
	}
}

// grantSend adds the peer's window update to the send window.
func (st *Stream) grantSend(delta uint32) error {
	st.mu.Lock()
	if uint64(st.sendWindow)+uint64(delta) > math.MaxUint32 {
		st.mu.Unlock()
		return protocolError("stream %d: window overflow", st.id)
	}
	st.sendWindow += delta
	st.mu.Unlock()
	st.wakeWriter(false)
	return nil
}

// sessionEnded wakes everything waiting on the stream; buffered data
// stays readable.
func (st *Stream) sessionEnded() {
	st.mu.Lock()
	st.ended = true
	syn := st.synPending
	st.synPending = false
	armed := st.tap != nil // told below, without the lock
	st.mu.Unlock()
	st.readable()
	st.wakeWriter(false)
	if armed {
		st.tapGone()
	}
	if syn {
		st.s.releaseSyn()
	}
}

// SetDeadline sets the read and write deadlines.
func (st *Stream) SetDeadline(t time.Time) error {
	st.SetReadDeadline(t)
	return st.SetWriteDeadline(t)
}

// SetReadDeadline makes a blocked or future Read fail with
// os.ErrDeadlineExceeded once t has passed; zero means none.
//
// Only a Read waiting now is woken: one that has not begun reads the new
// deadline, and a signal left for it would cost it a wait for nothing.
// A request through the ingress sets the deadline twice.
func (st *Stream) SetReadDeadline(t time.Time) error {
	st.mu.Lock()
	st.rdl = t
	waiting := st.readWaiters > 0
	st.mu.Unlock()
	if waiting {
		st.readable()
	}
	return nil
}

// SetWriteDeadline is SetReadDeadline for writes.
func (st *Stream) SetWriteDeadline(t time.Time) error {
	st.mu.Lock()
	st.wdl = t
	st.mu.Unlock()
	st.wakeWriter(true)
	return nil
}

// waitFor waits for a signal on ch or alt (which may be nil), the deadline
// dl (zero: none) or done.
func waitFor(ch, alt chan struct{}, dl time.Time, done <-chan struct{}) {
	if dl.IsZero() {
		select {
		case <-ch:
		case <-alt:
		case <-done:
		}
		return
	}
	var t *time.Timer
	if p, ok := waitTimers.Get().(*time.Timer); ok {
		t = p
		t.Reset(time.Until(dl))
	} else {
		t = time.NewTimer(time.Until(dl))
	}
	select {
	case <-ch:
	case <-alt:
	case <-t.C:
	case <-done:
	}
	// Once stopped, the timer's channel holds no stale tick: Reset
	// readies it for the next wait.
	t.Stop()
	waitTimers.Put(t)
}

// waitTimers are the timers of waits with a deadline, reused: a request
// through a stream waits with one at least once.
var waitTimers sync.Pool
