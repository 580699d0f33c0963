// Package transport defines the session and stream abstractions that carry
// tunnel traffic between an agent and the gateway. Implementations live in
// sub-packages: tlsmux (TLS over TCP with a stream multiplexer, also used
// over WebSocket by wstransport) and quictransport (QUIC). The gateway and
// the agent know only these interfaces; transporttest is the conformance
// suite every implementation passes.
package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"
)

// Stream is one reliable, ordered, bidirectional byte stream of a Session.
// CloseWrite sends EOF to the peer while reads continue (TCP half-close).
// Close sends EOF and stops reading. Reset abandons the stream in both
// directions, like a TCP RST: the peer's reads and writes fail at once,
// possibly before it has read all the data sent before the reset.
type Stream interface {
	net.Conn
	CloseWrite() error
	Reset() error
}

// Session is one authenticated connection between an agent and the gateway
// carrying many streams.
type Session interface {
	// OpenStream opens a new stream to the peer.
	OpenStream(ctx context.Context) (Stream, error)
	// AcceptStream waits for the next stream opened by the peer.
	AcceptStream(ctx context.Context) (Stream, error)
	// CloseWithError tears down the session and every stream on it,
	// telling the peer why.
	CloseWithError(code ErrorCode, reason string) error
	// Close is CloseWithError(CodeNone, "").
	Close() error
	// Context ends when the session has ended, for whatever reason.
	Context() context.Context
	// ConnectionState is the TLS state the session was authenticated
	// with.
	ConnectionState() tls.ConnectionState
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
}

// DatagramSession is a Session that also carries unreliable datagrams
// beside its streams (QUIC's, RFC 9221). UDP tunnels use them when both
// sides can.
type DatagramSession interface {
	Session
	// DatagramsEnabled says the peer takes datagrams.
	DatagramsEnabled() bool
	// SendDatagram sends p as one datagram, or fails with an error
	// wrapping ErrDatagramTooLarge when p does not fit the path now. It
	// waits while the session's short queue of datagrams to send is full.
	SendDatagram(p []byte) error
	// HandleDatagrams sets the function each datagram from the peer is
	// given to, in order, on the session's one goroutine that receives
	// them: it must return at once, and may keep p. nil drops them, as
	// before the first call.
	HandleDatagrams(func(p []byte))
}

// ErrDatagramTooLarge is a datagram that does not fit the path's packets.
var ErrDatagramTooLarge = errors.New("datagram too large for the path")

// ErrorCode says why a session was closed.
type ErrorCode uint32

// Session error codes.
const (
	CodeNone         ErrorCode = 0 // normal close
	CodeProtocol     ErrorCode = 1 // the peer broke the protocol
	CodeShuttingDown ErrorCode = 2 // the side closing is stopping
	CodeIdle         ErrorCode = 3 // the peer went silent
	CodeBusy         ErrorCode = 4 // the gateway is at its limit of sessions in their handshake: try again later
)

// Config tunes a session. The zero value is usable: every zero field takes
// the documented default. Every transport honours it.
type Config struct {
	// KeepAlivePeriod is how long a session may be silent before a side
	// sends a keepalive. Default 5s.
	KeepAlivePeriod time.Duration
	// MaxIdleTimeout bounds dead-peer detection: a peer that stops
	// answering (no FIN, no RST: packets silently dropped) is noticed and
	// the session closed within this time of the last packet heard from
	// it. Default 15s; at least twice KeepAlivePeriod (see WithDefaults).
	MaxIdleTimeout time.Duration
	// MaxIncomingStreams caps the streams opened by the peer that are open
	// at once; a stream above the cap is refused and the session survives.
	// Default 16384.
	MaxIncomingStreams int
	// StreamWindow is the largest receive window a stream grows to, in
	// bytes. Default 16 MiB.
	StreamWindow int
}

// Defaults for Config.
const (
	DefaultKeepAlivePeriod    = 5 * time.Second
	DefaultMaxIdleTimeout     = 15 * time.Second
	DefaultMaxIncomingStreams = 16384
	DefaultStreamWindow       = 16 << 20
)

// MinMaxIdleTimeout is the least MaxIdleTimeout the command lines take:
// below it, a keepalive (at most half of it) and its answer would have to
// cross the network in a few hundred milliseconds, and a busy path or a
// lost packet would pass for a dead peer.
const MinMaxIdleTimeout = 2 * time.Second

// WithDefaults returns c with its zero fields set to the defaults, and the
// keepalive period shortened to half the idle timeout when it is longer
// (KeepAliveLowered tells the caller, who can say so).
func (c Config) WithDefaults() Config {
	if c.MaxIdleTimeout <= 0 {
		c.MaxIdleTimeout = DefaultMaxIdleTimeout
	}
	if c.KeepAlivePeriod <= 0 {
		c.KeepAlivePeriod = DefaultKeepAlivePeriod
	}
	if c.KeepAlivePeriod > c.MaxIdleTimeout/2 {
		c.KeepAlivePeriod = c.MaxIdleTimeout / 2
	}
	if c.MaxIncomingStreams <= 0 {
		c.MaxIncomingStreams = DefaultMaxIncomingStreams
	}
	if c.StreamWindow <= 0 {
		c.StreamWindow = DefaultStreamWindow
	}
	return c
}

// KeepAliveLowered reports whether WithDefaults shortens the keepalive
// period of c (as set, or the default) because MaxIdleTimeout is less than
// twice as long, and returns the period it uses.
func (c Config) KeepAliveLowered() (period time.Duration, lowered bool) {
	asked := c.KeepAlivePeriod
	if asked <= 0 {
		asked = DefaultKeepAlivePeriod
	}
	period = c.WithDefaults().KeepAlivePeriod
	return period, period < asked
}

// ErrSessionClosed is returned by operations on a session that has ended.
var ErrSessionClosed = errors.New("session closed")

// PeerClosedError is why a session ended when the peer closed it with
// CloseWithError: its code, and its reason where the transport carries one
// (QUIC does, the multiplexer does not). It wraps ErrSessionClosed; find it
// in a session's context.Cause with errors.As.
type PeerClosedError struct {
	Code   ErrorCode
	Reason string
}

func (e *PeerClosedError) Error() string {
	msg := fmt.Sprintf("%v: closed by the peer (code %d)", ErrSessionClosed, e.Code)
	if e.Reason != "" {
		msg += ": " + e.Reason
	}
	return msg
}

func (e *PeerClosedError) Unwrap() error { return ErrSessionClosed }
