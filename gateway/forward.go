package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/diglett/diglett/internal/accept"
	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/relay"
	"github.com/diglett/diglett/internal/transport"
)

// statusConn is the agent's side of a visitor connection. Its first Read
// consumes the agent's status byte: the visitor's bytes flow to the agent at
// once, and the agent's reply flows back only once the agent said it reached
// its backend. A failure resets the visitor's connection.
type statusConn struct {
	transport.Stream
	timeout time.Duration
	visitor net.Conn

	mu       sync.Mutex
	checked  bool      // the status was read; written under mu by Read
	deadline time.Time // the read deadline set through SetReadDeadline
	statusBy time.Time // the status's deadline, once its read started
	sink     *net.TCPConn
	sinkOn   bool // the status was OK: the sink goes to the stream
}

// streamSinker is a stream that can write what it receives straight to
// the visitor's socket (see relay: the relay registers it).
type streamSinker interface {
	SetSink(dst *net.TCPConn)
	SinkWritten() int64
}

var _ streamSinker = (*statusConn)(nil)

// SetSink passes the relay's sink to the stream once the status was read:
// the status byte is never the visitor's.
func (s *statusConn) SetSink(c *net.TCPConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sink = c
	if sk, ok := s.Stream.(streamSinker); ok && s.sinkOn {
		sk.SetSink(c)
	}
}

// SinkWritten reports the bytes the stream wrote to the sink.
func (s *statusConn) SinkWritten() int64 {
	if sk, ok := s.Stream.(streamSinker); ok {
		return sk.SinkWritten()
	}
	return 0
}

// TryWrite passes the visitor's bytes to the stream without waiting, when
// the stream can (see relay).
func (s *statusConn) TryWrite(p []byte) (bool, error) {
	if tw, ok := s.Stream.(interface{ TryWrite([]byte) (bool, error) }); ok {
		return tw.TryWrite(p)
	}
	return false, nil
}

// errBackend reports a status other than OK.
type errBackend struct{ status protocol.Status }

func (e errBackend) Error() string { return "agent: " + e.status.String() }

func (s *statusConn) Read(p []byte) (int, error) {
	if !s.checked {
		if err := s.readStatus(); err != nil {
			reset(s.visitor)
			return 0, err
		}
		s.mu.Lock()
		s.sinkOn = true
		if sk, ok := s.Stream.(streamSinker); ok && s.sink != nil {
			sk.SetSink(s.sink)
		}
		s.mu.Unlock()
	}
	return s.Stream.Read(p)
}

// readStatus reads the agent's status within the status timeout, or the
// read deadline if that comes first, and puts the read deadline back.
func (s *statusConn) readStatus() error {
	s.mu.Lock()
	s.statusBy = time.Now().Add(s.timeout)
	s.Stream.SetReadDeadline(earliest(s.statusBy, s.deadline))
	s.mu.Unlock()
	st, err := protocol.ReadStatus(s.Stream)
	s.mu.Lock()
	s.checked = true
	s.Stream.SetReadDeadline(s.deadline)
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("read stream status: %w", err)
	}
	if st != protocol.StatusOK {
		return errBackend{st}
	}
	return nil
}

// SetReadDeadline sets the deadline of reads from the agent (the relay's
// half-close bound); while the status is awaited, the status timeout
// applies too.
func (s *statusConn) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deadline = t
	if !s.checked && !s.statusBy.IsZero() {
		t = earliest(t, s.statusBy)
	}
	return s.Stream.SetReadDeadline(t)
}

func (s *statusConn) SetDeadline(t time.Time) error {
	s.SetReadDeadline(t)
	return s.Stream.SetWriteDeadline(t)
}

// earliest is the earlier of two deadlines; the zero time is none.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// acceptLoop serves the tunnel's public port until it closes.
func (t *tunnel) acceptLoop(ln net.Listener) {
	il := idleOf(ln)
	for {
		if il != nil {
			il.SetDeadline(time.Now().Add(il.after))
		}
		c, err := accept.Next(ln, t.reg.srv.ctx.Done(), t.log, "accept visitor")
		if err != nil {
			if il != nil && errors.Is(err, os.ErrDeadlineExceeded) {
				// No visitor for a while: no goroutine waits for
				// the next one (idle.go). The loop keeps its count
				// in the server's visitors while parked.
				if il.park(func() { t.acceptLoop(ln) }, t.reg.srv.visitors.Done) {
					return
				}
				continue
			}
			t.reg.srv.visitors.Done()
			return
		}
		release := t.reg.srv.limits.acquireTCP(t, c.RemoteAddr())
		if release == nil {
			reset(c)
			continue
		}
		t.reg.srv.visitors.Add(1)
		go func() {
			defer t.reg.srv.visitors.Done()
			defer release()
			t.serveVisitor(c)
		}()
	}
}

// serveVisitor forwards one public connection to a live agent of the
// tunnel, trying each member once.
func (t *tunnel) serveVisitor(c net.Conn) {
	members := t.live()
	remote := t.remoteMembers()
	if len(members) == 0 && len(remote) == 0 {
		t.log.Debug("visitor refused: no agent online", "visitor", c.RemoteAddr())
		answerOffline(c)
		return
	}
	if pol := t.policy(); pol != nil {
		if pol.user != "" {
			t.log.Debug("visitor refused: the tunnel asks for basic auth, which only its HTTP address can check", "visitor", c.RemoteAddr())
			reset(c)
			return
		}
		if !pol.allows(addrIP(c.RemoteAddr())) {
			t.log.Debug("visitor refused: address not allowed", "visitor", c.RemoteAddr())
			reset(c)
			return
		}
	}
	if len(members) == 0 {
		t.serveRemote(c, remote)
		return
	}
	srv := t.reg.srv
	var st transport.Stream
	var agent *session
	inTurn(t, members, func(m *session) bool {
		s, err := m.openStream(srv.ctx, t.name, c.RemoteAddr().String())
		if err != nil {
			t.log.Debug("open stream failed, trying next agent", "err", err)
			return false
		}
		st, agent = s, m
		return true
	})
	if st == nil {
		t.log.Debug("visitor refused: no agent reachable", "visitor", c.RemoteAddr())
		reset(c)
		return
	}
	t.relayVisitor(c, st, agent.id)
}

// relayVisitor relays visitor c and st, a stream to an agent (through
// another node with extra "node", NAME), once the agent's status says
// it reached its backend, and logs the connection.
func (t *tunnel) relayVisitor(c net.Conn, st transport.Stream, session uint64, extra ...string) {
	srv := t.reg.srv
	sc := &statusConn{Stream: st, timeout: srv.cfg.StatusTimeout, visitor: c}
	began := time.Now()
	srv.obs.VisitorOpened(t.name)
	in, out, err := relay.PipeWith(c, sc, relay.Options{HalfCloseTimeout: srv.cfg.HalfCloseTimeout})
	if err != nil {
		t.log.Debug("visitor connection ended", "visitor", c.RemoteAddr(), "err", err)
	}
	if al := srv.cfg.AccessLog; al != nil {
		attrs := []slog.Attr{slog.String("tunnel", t.name), slog.String("visitor", c.RemoteAddr().String()),
			slog.Uint64("session", session), slog.Int64("bytes_in", in), slog.Int64("bytes_out", out),
			slog.Duration("duration", time.Since(began))}
		for i := 0; i+1 < len(extra); i += 2 {
			attrs = append(attrs, slog.String(extra[i], extra[i+1]))
		}
		al.LogAttrs(context.Background(), slog.LevelInfo, "tcp visitor", attrs...)
	}
	// Told after the access log line is written: a test that sees the
	// count sees the line.
	srv.obs.VisitorClosed(t.name, in, out)
}

// reset closes c so that the visitor sees a reset rather than a clean EOF.
func reset(c net.Conn) {
	if s, ok := c.(interface{ Reset() error }); ok {
		s.Reset()
		return
	}
	resetConn(c)
}

// resetConn closes c, a connection as accepted, with a TCP reset.
func resetConn(c net.Conn) error {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	return c.Close()
}
