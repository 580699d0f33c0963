package gateway

import (
	"errors"
	"net"
	"sync"
	"time"

	"github.com/diglett/diglett/internal/readiness"
	"github.com/diglett/diglett/internal/transport/tlsmux"
)

// An idle agent session keeps no goroutine in the gateway. Over TLS over
// TCP, a session that received nothing for a second parks its receive
// loop on the server's poller (package readiness), which starts a new
// loop when the agent sends again; the control stream has no goroutine of
// its own (control.go). A tunnel's public TCP port parks its accept loop
// the same way while no visitor comes. Without a poller (other platforms
// than Linux), both keep their goroutine.

// defaultParkAfter is how long a session or a public port is quiet
// before its goroutine parks.
const defaultParkAfter = 200 * time.Millisecond

// poller returns the server's poller, started on first use; nil when
// the server is closed or the platform has none.
func (s *Server) poller() *readiness.Poller {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.idleFailed {
		return nil
	}
	if s.idle == nil {
		p, err := readiness.New()
		if err != nil {
			s.idleFailed = true
			if !errors.Is(err, errors.ErrUnsupported) {
				s.log.Warn("idle sessions keep a goroutine each: no poller", "err", err)
			}
			return nil
		}
		s.idle = p
	}
	return s.idle
}

// closePoller stops the poller, once every session and port is closed.
func (s *Server) closePoller() {
	s.mu.Lock()
	p := s.idle
	s.mu.Unlock()
	if p != nil {
		p.Close()
	}
}

// idleFor returns what lets the session over conn park while idle: conn
// must be the accepted TCP connection itself.
func (s *Server) idleFor(conn net.Conn) tlsmux.Idle {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return tlsmux.Idle{}
	}
	p := s.poller()
	if p == nil {
		return tlsmux.Idle{}
	}
	w, err := p.Watch(tc)
	if err != nil {
		return tlsmux.Idle{}
	}
	return tlsmux.Idle{Parker: w, After: s.parkAfter, Done: w.Close}
}

// idleListener is a tunnel's public TCP listener whose accept loop parks
// while no visitor comes (acceptLoop).
type idleListener struct {
	*net.TCPListener
	watch *readiness.Watch
	after time.Duration

	mu      sync.Mutex
	parked  bool
	closed  bool
	nudged  bool   // nudge came while the loop ran: it does not park next
	resume  func() // runs the accept loop again when a visitor comes
	abandon func() // what the loop does as it ends, if it never resumes
}

// idleListen wraps ln for parking when it is a plain TCP listener and the
// server has a poller; otherwise it returns ln.
func (s *Server) idleListen(ln net.Listener) net.Listener {
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		return ln
	}
	p := s.poller()
	if p == nil {
		return ln
	}
	w, err := p.Watch(tl)
	if err != nil {
		return ln
	}
	return &idleListener{TCPListener: tl, watch: w, after: s.parkAfter}
}

// park hands the wait for the next visitor to the poller and reports
// whether it did: resume then runs on a goroutine of its own when one
// comes, or abandon runs if the listener closes first.
func (l *idleListener) park(resume, abandon func()) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	if l.nudged {
		l.nudged = false
		return false
	}
	l.resume, l.abandon = resume, abandon
	if !l.watch.Park(l.wake) {
		return false
	}
	l.parked = true
	return true
}

func (l *idleListener) wake() {
	l.mu.Lock()
	if !l.parked {
		l.mu.Unlock()
		return
	}
	l.parked = false
	f := l.resume
	l.mu.Unlock()
	f()
}

// nudge makes the accept loop look again without a new connection (a
// PROXY header finished reading, proxyproto.go): a parked loop resumes,
// a loop waiting in Accept returns from it at once, and a loop between
// the two does not park next.
func (l *idleListener) nudge() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	if l.parked {
		var f func()
		if l.watch.Unpark() {
			// Otherwise the poller's wake is already on its way.
			l.parked = false
			f = l.resume
		}
		l.mu.Unlock()
		if f != nil {
			f()
		}
		return
	}
	l.nudged = true
	l.mu.Unlock()
	l.TCPListener.SetDeadline(time.Now())
}

// idleOf is the parking listener under ln, a tunnel's port, or nil.
func idleOf(ln net.Listener) *idleListener {
	switch l := ln.(type) {
	case *idleListener:
		return l
	case *proxyListener:
		return l.inline
	}
	return nil
}

// portListener makes ln, a tunnel's new public TCP listener, park while
// idle where it can, behind the PROXY protocol reader when the gateway
// takes the protocol.
func (s *Server) portListener(ln net.Listener) net.Listener {
	pl := s.idleListen(ln)
	if len(s.cfg.ProxyProtocolFrom) == 0 {
		return pl
	}
	if il, ok := pl.(*idleListener); ok {
		return newProxyPort(il, s.cfg.ProxyProtocolFrom, s.cfg.FirstByteTimeout, s.log)
	}
	return s.AcceptProxyProtocol(pl)
}

// Close closes the listener; a parked loop is ended as if it had seen
// the listener close.
func (l *idleListener) Close() error {
	l.mu.Lock()
	l.closed = true
	var gone func()
	if l.parked && l.watch.Unpark() {
		l.parked = false
		gone = l.abandon
	}
	l.mu.Unlock()
	l.watch.Close()
	err := l.TCPListener.Close()
	if gone != nil {
		gone()
	}
	return err
}
