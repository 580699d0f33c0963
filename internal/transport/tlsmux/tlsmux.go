// Package tlsmux is the TLS-over-TCP transport: one TLS 1.3 connection
// carrying many streams through the yamux stream multiplexer (the libp2p
// implementation, which has real half-close and stream reset).
package tlsmux

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/libp2p/go-yamux/v5"

	"github.com/diglett/diglett/internal/transport"
)

// Config tunes a session. The zero value is usable: every zero field takes
// the documented default.
type Config struct {
	// KeepAlive bounds dead-peer detection: a silent peer is noticed and
	// the session closed within this time. Default 15s.
	KeepAlive time.Duration
	// MaxIncomingStreams caps the streams opened by the peer that are open
	// at once; a stream above the cap is reset and the session survives.
	// Default 16384.
	MaxIncomingStreams int
	// StreamWindow is the largest receive window a stream grows to, in
	// bytes. Default 16 MiB.
	StreamWindow int
}

// Defaults for Config.
const (
	DefaultKeepAlive          = 15 * time.Second
	DefaultMaxIncomingStreams = 16384
	DefaultStreamWindow       = 16 << 20
)

func (c Config) yamux() *yamux.Config {
	if c.KeepAlive <= 0 {
		c.KeepAlive = DefaultKeepAlive
	}
	if c.MaxIncomingStreams <= 0 {
		c.MaxIncomingStreams = DefaultMaxIncomingStreams
	}
	if c.StreamWindow <= 0 {
		c.StreamWindow = DefaultStreamWindow
	}
	yc := yamux.DefaultConfig()
	yc.LogOutput = io.Discard
	// A ping goes out after KeepAlive/3 of silence; it must be sent and
	// answered within KeepAlive/3 each: a dead peer is noticed within
	// KeepAlive.
	yc.EnableKeepAlive = true
	yc.KeepAliveInterval = c.KeepAlive / 3
	yc.ConnectionWriteTimeout = c.KeepAlive / 3
	yc.MaxIncomingStreams = uint32(c.MaxIncomingStreams)
	yc.AcceptBacklog = 1024
	yc.MaxStreamWindowSize = uint32(max(c.StreamWindow, 256<<10))
	return yc
}

// Server performs the server side of the TLS handshake on conn (bounded by
// ctx) and starts a session over it. conn is closed on failure.
func Server(ctx context.Context, conn net.Conn, tlsConf *tls.Config, cfg Config) (*Session, error) {
	return start(ctx, conn, tls.Server(conn, tlsConf), cfg, yamux.Server)
}

// Client performs the client side of the TLS handshake on conn (bounded by
// ctx) and starts a session over it. conn is closed on failure.
func Client(ctx context.Context, conn net.Conn, tlsConf *tls.Config, cfg Config) (*Session, error) {
	return start(ctx, conn, tls.Client(conn, tlsConf), cfg, yamux.Client)
}

type newMux func(net.Conn, *yamux.Config, func() (yamux.MemoryManager, error)) (*yamux.Session, error)

func start(ctx context.Context, raw net.Conn, tc *tls.Conn, cfg Config, mux newMux) (*Session, error) {
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	if v := tc.ConnectionState().Version; v != tls.VersionTLS13 {
		raw.Close()
		return nil, fmt.Errorf("tls handshake: negotiated version %#x, need TLS 1.3", v)
	}
	ms, err := mux(tc, cfg.yamux(), nil)
	if err != nil {
		raw.Close()
		return nil, fmt.Errorf("start multiplexer: %w", err)
	}
	s := &Session{mux: ms, tls: tc, done: make(chan struct{}), accepted: make(chan *yamux.Stream)}
	go func() {
		<-ms.CloseChan()
		s.Close()
	}()
	go s.acceptLoop()
	return s, nil
}

// Session is a tlsmux session. It implements transport.Session.
type Session struct {
	mux       *yamux.Session
	tls       *tls.Conn
	accepted  chan *yamux.Stream
	done      chan struct{}
	closeOnce sync.Once
}

var _ transport.Session = (*Session)(nil)

// ConnectionState reports the TLS state of the session's connection.
func (s *Session) ConnectionState() tls.ConnectionState { return s.tls.ConnectionState() }

// OpenStream opens a stream to the peer.
func (s *Session) OpenStream(ctx context.Context) (transport.Stream, error) {
	st, err := s.mux.OpenStream(ctx)
	if err != nil {
		return nil, s.wrapErr("open stream", err)
	}
	return st, nil
}

// AcceptStream waits for the next stream opened by the peer.
func (s *Session) AcceptStream(ctx context.Context) (transport.Stream, error) {
	select {
	case st := <-s.accepted:
		return st, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.done:
		return nil, fmt.Errorf("accept stream: %w", transport.ErrSessionClosed)
	}
}

// acceptLoop hands the multiplexer's streams to AcceptStream callers, so
// that AcceptStream can honour a context. It ends with the session.
func (s *Session) acceptLoop() {
	for {
		st, err := s.mux.AcceptStream()
		if err != nil {
			s.Close()
			return
		}
		select {
		case s.accepted <- st:
		case <-s.done:
			st.Reset()
			return
		}
	}
}

func (s *Session) wrapErr(op string, err error) error {
	if s.mux.IsClosed() {
		return fmt.Errorf("%s: %w", op, transport.ErrSessionClosed)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// Close ends the session and all its streams.
func (s *Session) Close() error {
	s.closeOnce.Do(func() {
		close(s.done)
		s.mux.Close()
		s.tls.Close()
	})
	return nil
}

// Done is closed when the session ends.
func (s *Session) Done() <-chan struct{} { return s.done }

// LocalAddr is the local address of the underlying connection.
func (s *Session) LocalAddr() net.Addr { return s.tls.LocalAddr() }

// RemoteAddr is the peer's address.
func (s *Session) RemoteAddr() net.Addr { return s.tls.RemoteAddr() }

// NumStreams reports the streams currently open on the session.
func (s *Session) NumStreams() int { return s.mux.NumStreams() }
