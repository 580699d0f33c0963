package diglett

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/transport"
)

// Conn is a visitor's connection, carried from the gateway as a stream.
// RemoteAddr is the visitor's address, LocalAddr the tunnel's public
// address. CloseWrite half-closes like TCP.
type Conn struct {
	st      transport.Stream
	name    string
	visitor net.Addr
	public  net.Addr

	statusOnce sync.Once
	statusErr  error
}

var _ net.Conn = (*Conn)(nil)

// Name is the tunnel the visitor reached.
func (c *Conn) Name() string { return c.name }

// sendStatus tells the gateway, once, whether the connection is served.
func (c *Conn) sendStatus(s protocol.Status) error {
	c.statusOnce.Do(func() {
		_, c.statusErr = c.st.Write([]byte{byte(s)})
	})
	return c.statusErr
}

// Read reads the visitor's bytes.
func (c *Conn) Read(p []byte) (int, error) { return c.st.Read(p) }

// Write sends bytes to the visitor.
func (c *Conn) Write(p []byte) (int, error) {
	if err := c.sendStatus(protocol.StatusOK); err != nil {
		return 0, err
	}
	return c.st.Write(p)
}

// CloseWrite sends EOF to the visitor; reading goes on.
func (c *Conn) CloseWrite() error {
	if err := c.sendStatus(protocol.StatusOK); err != nil {
		return err
	}
	return c.st.CloseWrite()
}

// Close closes the connection.
func (c *Conn) Close() error {
	c.sendStatus(protocol.StatusOK)
	return c.st.Close()
}

// Abort refuses the connection because its backend could not be reached:
// the gateway resets the visitor's connection (HTTP visitors get 502, or 504
// when err is a timeout). It has no effect after the first Write.
func (c *Conn) Abort(err error) error {
	s := protocol.StatusRefused
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		s = protocol.StatusTimeout
	}
	c.sendStatus(s)
	return c.st.Close()
}

func (c *Conn) LocalAddr() net.Addr  { return c.public }
func (c *Conn) RemoteAddr() net.Addr { return c.visitor }

func (c *Conn) SetDeadline(t time.Time) error      { return c.st.SetDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.st.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.st.SetWriteDeadline(t) }

// visitorAddr parses the visitor address of a stream header.
func visitorAddr(s string) net.Addr {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return net.TCPAddrFromAddrPort(ap)
	}
	return Addr{Host: s}
}
