// Package tlsmux is the TLS-over-TCP transport: one TLS 1.3 connection
// carrying many streams through the yamux stream multiplexer (the libp2p
// implementation, which has real half-close and stream reset). New runs the
// same multiplexer over any other authenticated connection (a WebSocket,
// say).
package tlsmux

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/libp2p/go-yamux/v5"

	"github.com/diglett/diglett/internal/transport"
)

func yamuxConfig(c transport.Config) *yamux.Config {
	c = c.WithDefaults()
	yc := yamux.DefaultConfig()
	yc.LogOutput = io.Discard
	// A ping goes out every KeepAlivePeriod; it must be sent and answered
	// within the rest of MaxIdleTimeout: a dead peer is noticed within
	// MaxIdleTimeout. Every other write must finish within that rest too.
	yc.EnableKeepAlive = true
	yc.KeepAliveInterval = c.KeepAlivePeriod
	yc.ConnectionWriteTimeout = c.MaxIdleTimeout - c.KeepAlivePeriod
	yc.MaxIncomingStreams = uint32(c.MaxIncomingStreams)
	// The multiplexer's defaults for the queue of streams not yet accepted
	// (also its bound on streams opened and not yet acknowledged); a
	// larger one costs 8 bytes per slot in every session, idle or not.
	yc.AcceptBacklog = 256
	// TLS and WebSocket connections buffer what they read already (a
	// whole record or frame); the multiplexer's own 4 KiB read buffer per
	// session would only copy it once more.
	yc.ReadBufSize = 0
	yc.MaxStreamWindowSize = uint32(max(c.StreamWindow, 256<<10))
	return yc
}

// Server performs the server side of the TLS handshake on conn (bounded by
// ctx) and starts a session over it. conn is closed on failure.
func Server(ctx context.Context, conn net.Conn, tlsConf *tls.Config, cfg transport.Config) (*Session, error) {
	tc := tls.Server(conn, tlsConf)
	if err := handshake(ctx, tc); err != nil {
		conn.Close()
		return nil, err
	}
	return New(tc, tc.ConnectionState(), false, cfg)
}

// Client performs the client side of the TLS handshake on conn (bounded by
// ctx) and starts a session over it. conn is closed on failure.
func Client(ctx context.Context, conn net.Conn, tlsConf *tls.Config, cfg transport.Config) (*Session, error) {
	tc := tls.Client(conn, tlsConf)
	if err := handshake(ctx, tc); err != nil {
		conn.Close()
		return nil, err
	}
	return New(tc, tc.ConnectionState(), true, cfg)
}

func handshake(ctx context.Context, tc *tls.Conn) error {
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("tls handshake: %w", err)
	}
	if v := tc.ConnectionState().Version; v != tls.VersionTLS13 {
		return fmt.Errorf("tls handshake: negotiated version %#x, need TLS 1.3", v)
	}
	return nil
}

// New starts a session over conn, a connection authenticated by state;
// client says which side of the multiplexer this is. conn is closed on
// failure and when the session ends.
func New(conn net.Conn, state tls.ConnectionState, client bool, cfg transport.Config) (*Session, error) {
	newMux := yamux.Server
	if client {
		newMux = yamux.Client
	}
	ms, err := newMux(conn, yamuxConfig(cfg), nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("start multiplexer: %w", err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	s := &Session{mux: ms, conn: conn, state: state, ctx: ctx, cancel: cancel, accepted: make(chan *yamux.Stream)}
	go s.acceptLoop()
	return s, nil
}

// Session is a tlsmux session. It implements transport.Session.
type Session struct {
	mux       *yamux.Session
	conn      net.Conn
	state     tls.ConnectionState
	accepted  chan *yamux.Stream
	ctx       context.Context
	cancel    context.CancelCauseFunc
	closeOnce sync.Once
}

var _ transport.Session = (*Session)(nil)

// ConnectionState reports the TLS state the session was authenticated
// with.
func (s *Session) ConnectionState() tls.ConnectionState { return s.state }

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
	case <-s.ctx.Done():
		return nil, fmt.Errorf("accept stream: %w", transport.ErrSessionClosed)
	}
}

// acceptLoop hands the multiplexer's streams to AcceptStream callers, so
// that AcceptStream can honour a context. It ends with the session, whose
// end it notices first (the multiplexer's accept fails with the reason).
func (s *Session) acceptLoop() {
	for {
		st, err := s.mux.AcceptStream()
		if err != nil {
			s.closeWith(err)
			return
		}
		select {
		case s.accepted <- st:
		case <-s.mux.CloseChan():
			st.Reset()
		case <-s.ctx.Done():
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

// CloseWithError ends the session and all its streams; the peer's
// operations fail with an error carrying code.
func (s *Session) CloseWithError(code transport.ErrorCode, reason string) error {
	s.closeOnce.Do(func() {
		err := transport.ErrSessionClosed
		if reason != "" {
			err = fmt.Errorf("%w: %s", err, reason)
		}
		s.cancel(err)
		s.mux.CloseWithError(uint32(code))
		s.conn.Close()
	})
	return nil
}

// Close ends the session and all its streams.
func (s *Session) Close() error { return s.CloseWithError(transport.CodeNone, "") }

// closeWith ends the session because of cause, the multiplexer's reason.
func (s *Session) closeWith(cause error) {
	s.closeOnce.Do(func() {
		var ge *yamux.GoAwayError
		switch {
		case errors.As(cause, &ge) && ge.Remote:
			cause = &transport.PeerClosedError{Code: transport.ErrorCode(ge.ErrorCode)}
		case errors.Is(cause, yamux.ErrKeepAliveTimeout), errors.Is(cause, yamux.ErrConnectionWriteTimeout):
			cause = fmt.Errorf("%w: the peer went silent (%v)", transport.ErrSessionClosed, cause)
		case errors.Is(cause, yamux.ErrSessionShutdown):
			cause = transport.ErrSessionClosed
		default:
			cause = fmt.Errorf("%w: %v", transport.ErrSessionClosed, cause)
		}
		s.cancel(cause)
		s.mux.Close()
		s.conn.Close()
	})
}

// Context ends when the session does; context.Cause says why.
func (s *Session) Context() context.Context { return s.ctx }

// LocalAddr is the local address of the underlying connection.
func (s *Session) LocalAddr() net.Addr { return s.conn.LocalAddr() }

// RemoteAddr is the peer's address.
func (s *Session) RemoteAddr() net.Addr { return s.conn.RemoteAddr() }

// NumStreams reports the streams currently open on the session.
func (s *Session) NumStreams() int { return s.mux.NumStreams() }
