package mux

import (
	"errors"
	"io"
	"net"
	"time"
)

// Parking: a session with a Config.Parker keeps no goroutine while it is
// idle. The receive loop reads under a read deadline ParkAfter ahead of
// the last frame. When the deadline passes at a frame boundary and
// nothing but pings has arrived for ParkAfter, the loop hands the wait to
// the Parker and returns; the Parker starts a new loop when the
// connection has something to read. A ping (the keepalive of either
// side, or its answer) that wakes an idle session brings the deadline to
// the present: the loop answers it and parks again at once, instead of
// waiting out ParkAfter for nothing. A deadline that passes while frames
// still come, or inside a frame, is moved on and the read goes on: the
// connection's reads are resumable after a timeout (TLS keeps a part-read
// record), so nothing is lost. Only the loop sets the deadline, until shutdown takes
// it over for its linger (s.ending).

// errParked ends a receive loop that parked.
var errParked = errors.New("receive loop parked")

// What onDeadline made of a read error.
const (
	deadlineOther   = iota // not the loop's deadline: a real error
	deadlineRenewed        // the deadline moved on: read again
	deadlineParked         // the loop parked: return
)

// readHeader reads the next frame's header into s.hdr. With a Parker it
// returns errParked when the loop parked instead.
func (s *Session) readHeader() error {
	if s.cfg.Parker == nil {
		_, err := io.ReadFull(s.conn, s.hdr[:])
		return err
	}
	n := 0
	for n < headerSize {
		m, err := s.conn.Read(s.hdr[n:])
		n += m
		if err == nil || n == headerSize {
			continue
		}
		switch s.onDeadline(err, n == 0) {
		case deadlineRenewed:
			continue
		case deadlineParked:
			return errParked
		}
		if n > 0 && err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	return nil
}

// onDeadline handles err, a read error of the receive loop. boundary
// says no frame is part-read.
func (s *Session) onDeadline(err error, boundary bool) int {
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		return deadlineOther
	}
	s.pmu.Lock()
	defer s.pmu.Unlock()
	now := time.Now()
	if s.ending {
		// The deadline that passed may be the loop's, set before
		// shutdown's: the linger's is in place and has not passed.
		if monoNow() < s.lingerEnd {
			return deadlineRenewed
		}
		return deadlineOther
	}
	quiet := now.Sub(time.Unix(0, s.lastWork))
	if boundary && quiet >= s.cfg.ParkAfter {
		// A wake that comes at once waits for pmu, and finds parked set.
		if s.cfg.Parker.Park(s.wakeFn) {
			s.parked = true
			s.parks.Add(1)
			return deadlineParked
		}
		// The Parker cannot watch the connection: the loop waits here.
	}
	wait := s.cfg.ParkAfter - quiet
	if wait <= 0 {
		wait = s.cfg.ParkAfter
	}
	s.conn.SetReadDeadline(now.Add(wait))
	return deadlineRenewed
}

// afterPing follows a ping frame received at now: when nothing else came
// for ParkAfter, the read deadline is brought to now, so that the next
// read that would wait parks the loop instead (onDeadline). What is
// already buffered above the connection is still read first.
func (s *Session) afterPing(now int64) {
	if now-s.lastWork < int64(s.cfg.ParkAfter) {
		return
	}
	s.pmu.Lock()
	if !s.ending {
		s.conn.SetReadDeadline(time.Unix(0, now))
	}
	s.pmu.Unlock()
}

// wake starts the receive loop again, on the Parker's goroutine.
func (s *Session) wake() {
	s.pmu.Lock()
	if !s.parked {
		s.pmu.Unlock()
		return
	}
	s.parked = false
	if !s.ending {
		s.conn.SetReadDeadline(time.Now().Add(s.cfg.ParkAfter))
	}
	s.pmu.Unlock()
	s.recvLoop()
}

// parkReader is what the receive loop reads payloads through when the
// session has a Parker: the loop's deadline passing inside a payload
// moves it on.
type parkReader struct{ s *Session }

func (r parkReader) Read(p []byte) (int, error) {
	for {
		n, err := r.s.conn.Read(p)
		if err == nil {
			return n, nil
		}
		if r.s.onDeadline(err, false) != deadlineRenewed {
			return n, err
		}
		if n > 0 {
			return n, nil
		}
	}
}
