// Package transport defines the session and stream abstractions that carry
// tunnel traffic between an agent and the gateway. Implementations live in
// sub-packages (tlsmux today); the gateway and the agent know only these
// interfaces.
package transport

import (
	"context"
	"errors"
	"net"
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
	// Close tears down the session and every stream on it.
	Close() error
	// Done is closed when the session has ended, for whatever reason.
	Done() <-chan struct{}
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
}

// ErrSessionClosed is returned by operations on a session that has ended.
var ErrSessionClosed = errors.New("session closed")
