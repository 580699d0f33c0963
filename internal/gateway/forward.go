package gateway

import (
	"fmt"
	"net"
	"time"

	"github.com/diglett/diglett/internal/protocol"
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
