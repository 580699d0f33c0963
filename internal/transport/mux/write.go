package mux

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"runtime"
	"time"
)

// The write path: group commit. Frames are appended to s.out under s.wmu;
// the goroutine that finds no writer active becomes the writer, takes the
// whole pending output, writes it with one conn.Write outside the lock and
// repeats while more was appended meanwhile; before its first round, when
// the session is busy, it yields once to the goroutines ready to run. After
// maxWriterRounds rounds a writer hands the job to a short-lived goroutine,
// so that a caller is not held writing other streams' frames for long under
// sustained load.
const maxWriterRounds = 4

// A writer yields first only when the session is busy: other streams'
// writers joined the last writer's turn, or that turn began less than
// busyWithin ago. Under load a yield gathers the writers the network poller
// readied together into one batch; on a quiet session there are none, and
// the yield would only cost the request at hand a trip through the
// scheduler, which also wakes an idle processor to look for work and can
// move the writer to another thread.
const busyWithin = 250 * time.Microsecond

// hardPendingCap ends the session when control frames pile up that far
// beyond MaxPending: a peer that sends without reading what it provokes.
const hardPendingExtra = 4 << 20

func putHeader(b []byte, typ uint8, flags uint16, id, length uint32) {
	b[0] = protoVersion
	b[1] = typ
	binary.BigEndian.PutUint16(b[2:], flags)
	binary.BigEndian.PutUint32(b[4:], id)
	binary.BigEndian.PutUint32(b[8:], length)
}

// appendHeaderLocked appends one frame header to the pending output.
func (s *Session) appendHeaderLocked(typ uint8, flags uint16, id, length uint32) {
	if s.out == nil {
		s.out = getOut()
	}
	n := len(s.out)
	s.out = append(s.out, make([]byte, headerSize)...)
	putHeader(s.out[n:], typ, flags, id, length)
}

// sendControl queues a frame without payload, bypassing the cap on pending
// output. With wait, the caller writes it when no writer is active;
// without, a goroutine does (for the receive loop and timers, which must
// not block on the connection).
func (s *Session) sendControl(typ uint8, flags uint16, id, length uint32, wait bool) error {
	s.wmu.Lock()
	if s.wclosed {
		s.wmu.Unlock()
		return ErrSessionClosed
	}
	if len(s.out) > s.cfg.MaxPending+hardPendingExtra {
		s.wmu.Unlock()
		go s.shutdown(errWriteBacklog, CodeInternalError, false)
		return errWriteBacklog
	}
	s.appendHeaderLocked(typ, flags, id, length)
	if !wait {
		if !s.writing {
			s.writing = true
			go s.writeRounds(0)
			return s.unlockNil()
		}
		return s.unlockNil()
	}
	s.flushLocked()
	return nil
}

// lazyDelay bounds how long a frame queued lazily (a SYN, an ACK) waits
// for a batch to go out with.
const lazyDelay = time.Millisecond

// sendLazy queues a control frame that may wait up to lazyDelay for the
// next batch.
func (s *Session) sendLazy(typ uint8, flags uint16, id, length uint32) {
	s.wmu.Lock()
	if !s.wclosed {
		s.appendHeaderLocked(typ, flags, id, length)
		s.armLazyLocked()
	}
	s.wmu.Unlock()
}

// armLazyLocked makes sure what is pending is written within lazyDelay
// even if no writer comes.
func (s *Session) armLazyLocked() {
	if s.writing || s.lazyArmed {
		return
	}
	s.lazyArmed = true
	if s.lazyTimer == nil {
		s.lazyTimer = time.AfterFunc(lazyDelay, s.flushLazy)
	} else {
		s.lazyTimer.Reset(lazyDelay)
	}
}

func (s *Session) flushLazy() {
	s.wmu.Lock()
	s.lazyArmed = false
	if s.wclosed {
		s.wmu.Unlock()
		return
	}
	s.flushLocked()
}

// flushNow writes what is pending, unless a writer is active.
func (s *Session) flushNow() {
	s.wmu.Lock()
	s.flushLocked()
}

func (s *Session) unlockNil() error {
	s.wmu.Unlock()
	return nil
}

// writeData queues b as data frames of st (flags on the first frame),
// waiting while the pending output is over its cap, until the stream's
// write deadline or the session's end. It returns how many bytes of b
// were queued.
//
// A writer woken because the writer took the pending output queues its
// next frame even if others filled the room first: without that, writers
// that keep running (bulk relays) could take the room every time ahead of
// one that has to be woken (a new stream's header), for as long as the
// bulk lasts. So the output may pass its cap by a frame per waiter.
func (s *Session) writeData(st *Stream, b []byte, flags uint16) (int, error) {
	s.wmu.Lock()
	n := 0
	woken := false
	for n < len(b) {
		if s.wclosed {
			s.wmu.Unlock()
			return n, ErrSessionClosed
		}
		if len(s.out) >= s.cfg.MaxPending && !woken {
			if !s.writing {
				s.flushLocked()
				s.wmu.Lock()
				continue
			}
			ch := s.room
			if ch == nil {
				ch = make(chan struct{})
				s.room = ch
			}
			s.wmu.Unlock()
			if err := s.waitRoom(ch, st); err != nil {
				return n, err
			}
			s.wmu.Lock()
			woken = true
			continue
		}
		m := min(len(b)-n, s.cfg.MaxFrame)
		s.appendDataLocked(st.id, flags, b[n:n+m])
		flags = 0
		n += m
		woken = false
	}
	s.flushLocked()
	return n, nil
}

// tryWriteData queues all of b as data frames of st and flushes, if the
// pending output is under its cap (it may pass it by b, as writeData's
// woken writers may); else it queues nothing and reports false.
func (s *Session) tryWriteData(st *Stream, b []byte) (bool, error) {
	s.wmu.Lock()
	if s.wclosed {
		s.wmu.Unlock()
		return false, ErrSessionClosed
	}
	if len(s.out) >= s.cfg.MaxPending {
		s.wmu.Unlock()
		return false, nil
	}
	for n := 0; n < len(b); {
		m := min(len(b)-n, s.cfg.MaxFrame)
		s.appendDataLocked(st.id, 0, b[n:n+m])
		n += m
	}
	s.flushLocked()
	return true, nil
}

// appendDataLocked queues b as one data frame of stream id.
func (s *Session) appendDataLocked(id uint32, flags uint16, b []byte) {
	s.appendHeaderLocked(typeData, flags, id, uint32(len(b)))
	s.frames.Add(1)
	s.out = append(s.out, b...)
}

// waitRoom waits until ch is closed (the pending output was taken by the
// writer), the stream's write deadline passes or the session ends.
func (s *Session) waitRoom(ch chan struct{}, st *Stream) error {
	for {
		dl, w := st.holdWriteDeadline()
		if !dl.IsZero() && !time.Now().Before(dl) {
			st.releaseWaits()
			return os.ErrDeadlineExceeded
		}
		select {
		case <-ch:
			st.releaseWaits()
			return nil
		case <-s.done:
			st.releaseWaits()
			return ErrSessionClosed
		default:
		}
		waitFor(ch, w.deadline, dl, s.done)
		st.releaseWaits()
	}
}

// flushLocked makes sure the pending output gets written: the caller
// becomes the writer when none is active. Called with s.wmu held; returns
// with it released.
func (s *Session) flushLocked() {
	if s.writing || len(s.out) == 0 {
		s.wmu.Unlock()
		return
	}
	s.writing = true
	s.writeRoundsLocked(maxWriterRounds)
}

// writeRounds is the body of a writer goroutine.
func (s *Session) writeRounds(limit int) {
	s.wmu.Lock()
	s.writeRoundsLocked(limit)
}

// writeRoundsLocked writes the pending output until there is none, at
// most limit rounds (0: no limit) before handing over to a goroutine.
// Called by the writer (s.writing set) with s.wmu held; returns with it
// released.
func (s *Session) writeRoundsLocked(limit int) {
	for round := 0; ; round++ {
		if len(s.out) == 0 || s.werr != nil {
			if round > 0 {
				s.joined = s.frames.Load() - s.turnFrom
			}
			s.writerIdleLocked()
			s.wmu.Unlock()
			return
		}
		if limit > 0 && round >= limit {
			s.wmu.Unlock()
			go s.writeRounds(0)
			return
		}
		if round == 0 && s.busyLocked() {
			// Let the goroutines that are ready to run go first: the
			// network poller wakes the relays of many visitors at
			// once, and those that write now join this batch instead
			// of making a system call each.
			s.yields.Add(1)
			s.wmu.Unlock()
			runtime.Gosched()
			s.wmu.Lock()
			if len(s.out) == 0 || s.werr != nil {
				continue
			}
		}
		buf := s.out
		s.out, s.spare = s.spare, nil
		s.wakeRoomLocked()
		s.wmu.Unlock()
		err := s.writeConn(buf)
		s.wmu.Lock()
		if s.spare == nil && cap(buf) <= outBufKeep {
			s.spare = buf[:0]
		} else {
			putOut(buf)
		}
		if err != nil {
			s.werr = err
			s.writerIdleLocked()
			s.wmu.Unlock()
			s.shutdown(err, CodeNormal, false)
			return
		}
	}
}

// busyLocked starts a writer's turn and reports whether the session is
// busy.
func (s *Session) busyLocked() bool {
	now := monoNow()
	busy := s.joined > 0 || now-s.lastTurn < int64(busyWithin)
	s.lastTurn = now
	s.turnFrom = s.frames.Load()
	return busy
}

// writerIdleLocked ends the writer's turn: buffers go back to the pool and
// waiters are woken.
func (s *Session) writerIdleLocked() {
	s.writing = false
	if len(s.out) == 0 {
		putOut(s.out)
		s.out = nil
	}
	putOut(s.spare)
	s.spare = nil
	s.wakeRoomLocked()
	if s.idle != nil {
		close(s.idle)
		s.idle = nil
	}
}

func (s *Session) wakeRoomLocked() {
	if s.room != nil {
		close(s.room)
		s.room = nil
	}
}

// writeConn writes one batch to the connection. A write that does not
// complete within WriteTimeout ends the session: a watchdog timer, armed
// while writes go on, closes it (no write deadline is set on the
// connection: some connections, a WebSocket's, break for good when one
// passes even while idle).
func (s *Session) writeConn(b []byte) error {
	if s.cfg.WriteTimeout > 0 {
		s.writeSince.Store(time.Now().UnixNano())
		if !s.wtArmed.Load() && s.wtArmed.CompareAndSwap(false, true) {
			s.wtimer.Reset(s.cfg.WriteTimeout)
		}
	}
	if s.cfg.Hold != nil {
		s.cfg.Hold()
	}
	_, err := s.conn.Write(b)
	if s.flush != nil {
		if ferr := s.flush(); err == nil {
			err = ferr
		}
	}
	if s.cfg.WriteTimeout > 0 {
		s.writeSince.Store(0)
	}
	s.batches.Add(1)
	if err != nil {
		select {
		case <-s.done:
			if errors.Is(s.err, ErrWriteTimeout) {
				return ErrWriteTimeout
			}
		default:
		}
		var ne net.Error
		if errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
			return ErrWriteTimeout
		}
		return err
	}
	return nil
}

// writeWatch is the write watchdog's timer function.
func (s *Session) writeWatch() {
	wt := s.cfg.WriteTimeout
	for {
		if since := s.writeSince.Load(); since != 0 {
			el := time.Since(time.Unix(0, since))
			if el >= wt {
				s.shutdown(ErrWriteTimeout, CodeNormal, false)
				return
			}
			s.wtimer.Reset(wt - el)
			return
		}
		s.wtArmed.Store(false)
		// A write that started meanwhile saw the timer armed.
		if s.writeSince.Load() == 0 || !s.wtArmed.CompareAndSwap(false, true) {
			return
		}
	}
}

// sendGoAway queues a GoAway frame behind everything pending, closes the
// write path and waits (bounded by goAwayWait) until it was written. It
// reports whether this call wrote the GoAway without an error.
func (s *Session) sendGoAway(code uint32) bool {
	s.wmu.Lock()
	if s.wclosed {
		s.wmu.Unlock()
		return false
	}
	s.appendHeaderLocked(typeGoAway, 0, 0, code)
	s.wclosed = true
	if s.writing {
		ch := s.idle
		if ch == nil {
			ch = make(chan struct{})
			s.idle = ch
		}
		s.wmu.Unlock()
		t := time.NewTimer(goAwayWait)
		select {
		case <-ch:
		case <-t.C:
		}
		t.Stop()
		s.wmu.Lock()
		if s.writing {
			// Still stuck in a write: give up on the GoAway.
			s.wmu.Unlock()
			return false
		}
	}
	if s.werr != nil {
		s.wmu.Unlock()
		return false
	}
	if len(s.out) == 0 {
		// The writer that was active took the GoAway with the rest.
		s.wmu.Unlock()
		return true
	}
	s.writing = true
	buf := s.out
	s.out = nil
	s.wmu.Unlock()
	s.conn.SetWriteDeadline(time.Now().Add(goAwayWait))
	if s.cfg.Hold != nil {
		s.cfg.Hold()
	}
	_, err := s.conn.Write(buf)
	if s.flush != nil {
		s.flush()
	}
	s.wmu.Lock()
	putOut(buf)
	s.writerIdleLocked()
	s.wmu.Unlock()
	return err == nil
}

// closeWrites stops the write path without a GoAway.
func (s *Session) closeWrites() {
	s.wmu.Lock()
	s.wclosed = true
	s.wakeRoomLocked()
	s.wmu.Unlock()
}
