package diglett

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/transport"
)

// Conn is a visitor's connection, carried from the gateway as a stream.
// RemoteAddr is the visitor's address, LocalAddr the tunnel's public
// address. CloseWrite half-closes like TCP.
//
// RemoteAddr is the address the gateway saw the visitor connect from (a
// *net.TCPAddr for a TCP visitor), not the gateway's: a program serving a Listener itself
// has the visitor's address as is and needs no PROXY protocol header,
// which only a separate backend behind Forward needs
// (ForwardOptions.ProxyProtocol). On a tunnel's TCP port a Conn is one
// visitor's connection. Through the gateway's HTTP(S) ingress (by Host),
// the gateway reuses a Conn for the requests of several visitors, so
// RemoteAddr is that of the visitor whose request opened it: take each
// request's X-Forwarded-For (or Forwarded) instead.
//
// On a UDP tunnel (Config.UDP) a Conn is one flow: the datagrams of one
// visitor address, and it behaves like a connected UDP socket. Each Read
// returns exactly one datagram, truncated to the buffer as a UDP socket
// does; each Write sends p as exactly one datagram (at most 65507 bytes).
// RemoteAddr is then a *net.UDPAddr and LocalAddr's Network is "udp".
// Over QUIC the datagrams travel as QUIC datagrams: one too large for the
// path is dropped (Write still returns len(p), nil) and counted by
// Dropped, as are datagrams from the visitor that arrive while 64 wait
// unread. Close ends the flow; a UDP Conn has no half-close. Deadlines
// work as on a socket; the gateway ends a flow after its own idle
// timeout, and Read then returns io.EOF.
type Conn struct {
	st      transport.Stream
	name    string
	visitor net.Addr
	public  net.Addr
	udp     *udpFlow // nil for a TCP visitor

	statusOnce sync.Once
	statusErr  error
	readEOF    atomic.Bool
	closeOnce  sync.Once
	closed     func()          // called once, when the connection is closed
	session    context.Context // ends with the session carrying the stream
}

// lingerTimeout bounds how long a closed Conn keeps discarding what the
// visitor still sends, so the gateway is never left blocked writing to it.
const lingerTimeout = 10 * time.Second

var _ net.Conn = (*Conn)(nil)

// Name is the tunnel the visitor reached.
func (c *Conn) Name() string { return c.name }

// SessionContext ends when the session to the gateway that carries the
// connection has ended: the connection is then dead, even where no read or
// write is pending to notice it (a visitor that half-closed, waiting for a
// backend that sends nothing). A forwarder stops its relay then.
func (c *Conn) SessionContext() context.Context {
	if c.session == nil {
		return context.Background()
	}
	return c.session
}

// sendStatus tells the gateway, once, whether the connection is served.
func (c *Conn) sendStatus(s protocol.Status) error {
	c.statusOnce.Do(func() {
		_, c.statusErr = c.st.Write([]byte{byte(s)})
	})
	return c.statusErr
}

// Read reads the visitor's bytes. Reading, like writing, accepts the
// connection: whatever is written later reaches the visitor, however long
// the backend takes to answer.
func (c *Conn) Read(p []byte) (int, error) {
	if err := c.sendStatus(protocol.StatusOK); err != nil {
		return 0, err
	}
	if c.udp != nil {
		return c.udp.read(c.st, p)
	}
	n, err := c.st.Read(p)
	if err == io.EOF {
		c.readEOF.Store(true)
	}
	return n, err
}

// nextDatagram is Read for a UDP flow without the caller's buffer: the
// next datagram, valid until the next call.
func (c *Conn) nextDatagram() ([]byte, error) {
	if err := c.sendStatus(protocol.StatusOK); err != nil {
		return nil, err
	}
	return c.udp.next(c.st)
}

// Write sends bytes to the visitor.
func (c *Conn) Write(p []byte) (int, error) {
	if err := c.sendStatus(protocol.StatusOK); err != nil {
		return 0, err
	}
	if c.udp != nil {
		return c.udp.write(c.st, p)
	}
	return c.st.Write(p)
}

// TryWrite sends bytes to the visitor if the stream can take them without
// waiting, and reports whether it did (see internal/relay); a UDP flow
// never can.
func (c *Conn) TryWrite(p []byte) (bool, error) {
	tw, ok := c.st.(interface{ TryWrite([]byte) (bool, error) })
	if !ok || c.udp != nil {
		return false, nil
	}
	if err := c.sendStatus(protocol.StatusOK); err != nil {
		return false, err
	}
	return tw.TryWrite(p)
}

// CloseWrite sends EOF to the visitor; reading goes on.
func (c *Conn) CloseWrite() error {
	if c.udp != nil {
		return errNoHalfClose
	}
	if err := c.sendStatus(protocol.StatusOK); err != nil {
		return err
	}
	return c.st.CloseWrite()
}

// Close closes the connection. The visitor reads EOF after the data
// written so far; what it still sends is discarded for a while, then its
// connection is reset.
func (c *Conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		defer c.closed()
		c.sendStatus(protocol.StatusOK)
		if c.readEOF.Load() || c.udp != nil {
			err = c.st.Close()
			return
		}
		if err = c.st.CloseWrite(); err != nil {
			c.st.Reset()
			return
		}
		go c.linger()
	})
	return err
}

// linger discards the visitor's bytes until it closes its side, then
// releases the stream; a visitor that keeps sending is reset.
func (c *Conn) linger() {
	c.st.SetReadDeadline(time.Now().Add(lingerTimeout))
	if _, err := io.Copy(io.Discard, c.st); err != nil {
		c.st.Reset()
		return
	}
	c.st.Close()
}

// Reset abandons the connection at once: the visitor's connection is reset
// and data not yet delivered may be lost.
func (c *Conn) Reset() error {
	c.closeOnce.Do(c.closed)
	return c.st.Reset()
}

// Abort refuses the connection because its backend could not be reached:
// the gateway resets the visitor's connection (HTTP visitors get 502, or 504
// when err is a timeout). It has no effect after the first Read or Write.
func (c *Conn) Abort(err error) error {
	s := protocol.StatusRefused
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		s = protocol.StatusTimeout
	}
	return c.refuse(s)
}

// refuse answers status s (unless a status was sent already) and closes
// the connection.
func (c *Conn) refuse(s protocol.Status) error {
	c.sendStatus(s)
	var cerr error
	c.closeOnce.Do(func() {
		defer c.closed()
		cerr = c.st.Close()
	})
	return cerr
}

func (c *Conn) LocalAddr() net.Addr  { return c.public }
func (c *Conn) RemoteAddr() net.Addr { return c.visitor }

func (c *Conn) SetDeadline(t time.Time) error {
	if c.udp.queued() {
		c.udp.setReadDeadline(t)
		c.udp.setWriteDeadline(t)
		return nil
	}
	return c.st.SetDeadline(t)
}

func (c *Conn) SetReadDeadline(t time.Time) error {
	if c.udp.queued() {
		c.udp.setReadDeadline(t)
		return nil
	}
	return c.st.SetReadDeadline(t)
}

func (c *Conn) SetWriteDeadline(t time.Time) error {
	if c.udp.queued() {
		c.udp.setWriteDeadline(t)
		return nil
	}
	return c.st.SetWriteDeadline(t)
}

// visitorAddr parses the visitor address of a stream header: a
// *net.UDPAddr for a UDP flow's, a *net.TCPAddr otherwise.
func visitorAddr(s string, udp bool) net.Addr {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if udp {
			return net.UDPAddrFromAddrPort(ap)
		}
		return net.TCPAddrFromAddrPort(ap)
	}
	return Addr{Host: s, UDP: udp}
}
