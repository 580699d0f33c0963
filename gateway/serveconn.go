package gateway

import (
	"errors"
	"net"

	"github.com/diglett/diglett/internal/source"
)

// ErrGatewayBusy is returned by ServeConn for a connection refused because
// the handshake limits were reached (see Config.MaxHandshakes and
// Config.MaxHandshakesPerSource); the agent was told the gateway is busy.
var ErrGatewayBusy = errors.New("gateway: busy: too many agent connections in their handshake")

// ServeConn serves one agent connection accepted elsewhere (on a listener
// shared with another service, or a socket handed over by a supervisor)
// as Serve serves each connection it accepts: the TLS handshake, then the
// multiplexer or the WebSocket upgrade, the login and the session's whole
// life. It counts against the handshake limits like any other connection
// (a connection over them is refused as busy and ErrGatewayBusy returned),
// returns when the session ends, and always closes conn.
func (s *Server) ServeConn(conn net.Conn) error {
	if !s.enter() {
		conn.Close()
		return ErrServerClosed
	}
	defer s.wg.Done()
	slot := s.hs.acquire(source.OfAddr(conn.RemoteAddr()))
	if slot == nil {
		refuseBusy(conn)
		return ErrGatewayBusy
	}
	s.serveConn(conn, slot)
	return nil
}
