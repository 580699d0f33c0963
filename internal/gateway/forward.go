package gateway

import (
	"fmt"
	"net"
	"time"

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
	checked bool
}

// errBackend reports a status other than OK.
type errBackend struct{ status protocol.Status }

func (e errBackend) Error() string { return "agent: " + e.status.String() }

func (s *statusConn) Read(p []byte) (int, error) {
	if !s.checked {
		s.Stream.SetReadDeadline(time.Now().Add(s.timeout))
		st, err := protocol.ReadStatus(s.Stream)
		s.Stream.SetReadDeadline(time.Time{})
		if err != nil {
			reset(s.visitor)
			return 0, fmt.Errorf("read stream status: %w", err)
		}
		if st != protocol.StatusOK {
			reset(s.visitor)
			return 0, errBackend{st}
		}
		s.checked = true
	}
	return s.Stream.Read(p)
}

// acceptLoop serves the tunnel's public port until it closes.
func (t *tunnel) acceptLoop() {
	defer t.reg.srv.visitors.Done()
	for {
		c, err := accept(t.ln, t.reg.srv.ctx.Done(), t.log, "accept visitor")
		if err != nil {
			return
		}
		t.reg.srv.visitors.Add(1)
		go func() {
			defer t.reg.srv.visitors.Done()
			t.serveVisitor(c)
		}()
	}
}

// serveVisitor forwards one public connection to a live agent of the
// tunnel, trying each member once.
func (t *tunnel) serveVisitor(c net.Conn) {
	members := t.live()
	if len(members) == 0 {
		t.log.Debug("visitor refused: no agent online", "visitor", c.RemoteAddr())
		reset(c)
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
	srv := t.reg.srv
	start := t.next.Add(1)
	var st transport.Stream
	for i := range members {
		m := members[(int(start)+i)%len(members)]
		s, err := m.openStream(srv.ctx, t.name, c.RemoteAddr().String())
		if err != nil {
			t.log.Debug("open stream failed, trying next agent", "err", err)
			continue
		}
		st = s
		break
	}
	if st == nil {
		t.log.Debug("visitor refused: no agent reachable", "visitor", c.RemoteAddr())
		reset(c)
		return
	}
	sc := &statusConn{Stream: st, timeout: srv.cfg.StatusTimeout, visitor: c}
	if _, _, err := relay.Pipe(c, sc); err != nil {
		t.log.Debug("visitor connection ended", "visitor", c.RemoteAddr(), "err", err)
	}
}

// reset closes c so that the visitor sees a reset rather than a clean EOF.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}
