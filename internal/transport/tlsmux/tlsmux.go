// Package tlsmux is the TLS-over-TCP transport: one TLS 1.3 connection
// carrying many streams through diglett's stream multiplexer (package mux,
// on the yamux wire format, so agents of earlier releases still connect).
// New runs the same multiplexer over any other authenticated connection (a
// WebSocket, say).
package tlsmux

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/batchconn"
	"github.com/diglett/diglett/internal/transport/mux"
)

func muxConfig(c transport.Config) mux.Config {
	c = c.WithDefaults()
	return mux.Config{
		// A ping goes out after KeepAlivePeriod of silence; it must be
		// answered within the rest of MaxIdleTimeout: a dead peer is
		// noticed within MaxIdleTimeout. Every write must finish within
		// that rest too.
		KeepAlivePeriod:    c.KeepAlivePeriod,
		MaxIdleTimeout:     c.MaxIdleTimeout,
		WriteTimeout:       c.MaxIdleTimeout - c.KeepAlivePeriod,
		MaxIncomingStreams: c.MaxIncomingStreams,
		AcceptBacklog:      mux.DefaultAcceptBacklog,
		MaxStreamWindow:    max(c.StreamWindow, mux.InitialWindow),
	}
}

// Server performs the server side of the TLS handshake on conn (bounded by
// ctx) and starts a session over it. conn is closed on failure.
func Server(ctx context.Context, conn net.Conn, tlsConf *tls.Config, cfg transport.Config) (*Session, error) {
	tc := tls.Server(batchconn.New(conn), tlsConf)
	if err := handshake(ctx, tc); err != nil {
		conn.Close()
		return nil, err
	}
	return New(tc, tc.ConnectionState(), false, cfg)
}

// Client performs the client side of the TLS handshake on conn (bounded by
// ctx) and starts a session over it. conn is closed on failure.
func Client(ctx context.Context, conn net.Conn, tlsConf *tls.Config, cfg transport.Config) (*Session, error) {
	tc := tls.Client(batchconn.New(conn), tlsConf)
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
// client says which side of the multiplexer this is. conn is closed when
// the session ends. When conn is a TLS connection over a batchconn.Conn
// (as Server and Client make them), each batch of frames the multiplexer
// writes leaves in one system call, however many records it takes.
func New(conn net.Conn, state tls.ConnectionState, client bool, cfg transport.Config) (*Session, error) {
	return NewIdle(conn, state, client, cfg, Idle{})
}

// Idle lets an idle session keep no goroutine reading its connection
// (mux.Config.Parker): conn must be TLS over a plain TCP connection,
// whose socket Parker watches.
type Idle struct {
	Parker mux.Parker
	// After is how long the session is silent before it parks. Zero:
	// mux.DefaultParkAfter.
	After time.Duration
	// Done, when set, is called once when the session ends (to stop
	// watching the socket).
	Done func()
}

// NewIdle is New, with a session that parks while it is idle.
func NewIdle(conn net.Conn, state tls.ConnectionState, client bool, cfg transport.Config, idle Idle) (*Session, error) {
	s := &Session{conn: conn, idleDone: idle.Done}
	if _, ok := conn.(*tls.Conn); !ok {
		// Over a TLS connection the state is read from it when asked:
		// a copy is 200 bytes held for the session's life.
		s.state = &state
	}
	mc := muxConfig(cfg)
	mc.OnClose = s.ended
	mc.Parker, mc.ParkAfter = idle.Parker, idle.After
	if tc, ok := conn.(*tls.Conn); ok {
		if bc, ok := tc.NetConn().(*batchconn.Conn); ok {
			mc.Hold, mc.Flush = bc.Hold, bc.Flush
		}
	}
	if client {
		s.mux = mux.Client(conn, mc)
	} else {
		s.mux = mux.Server(conn, mc)
	}
	return s, nil
}

// Session is a tlsmux session. It implements transport.Session.
type Session struct {
	mux       *mux.Session
	conn      net.Conn
	state     *tls.ConnectionState // nil when conn is the *tls.Conn
	closeOnce sync.Once

	// ctx is made by the first Context call (an idle session is asked
	// for none), ended with the session's cause.
	mu       sync.Mutex
	ctx      context.Context
	cancel   context.CancelCauseFunc
	cause    error // why the session ended; the first recorded stays
	idleDone func()
}

var _ transport.Session = (*Session)(nil)

// ConnectionState reports the TLS state the session was authenticated
// with.
func (s *Session) ConnectionState() tls.ConnectionState {
	if s.state != nil {
		return *s.state
	}
	return s.conn.(*tls.Conn).ConnectionState()
}

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
	st, err := s.mux.AcceptStream(ctx)
	if err != nil {
		return nil, s.wrapErr("accept stream", err)
	}
	return st, nil
}

func (s *Session) wrapErr(op string, err error) error {
	if s.mux.IsClosed() || errors.Is(err, mux.ErrSessionClosed) {
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
		s.end(err)
		s.mux.CloseWithError(uint32(code))
	})
	return nil
}

// Close ends the session and all its streams.
func (s *Session) Close() error { return s.CloseWithError(transport.CodeNone, "") }

// ended records why the multiplexer's session ended (its OnClose; the
// first cause recorded stays).
func (s *Session) ended(cause error) {
	var ge *mux.GoAwayError
	switch {
	case errors.As(cause, &ge) && ge.Remote:
		cause = &transport.PeerClosedError{Code: transport.ErrorCode(ge.Code)}
	case errors.Is(cause, mux.ErrKeepAliveTimeout), errors.Is(cause, mux.ErrWriteTimeout):
		cause = fmt.Errorf("%w: the peer went silent (%v)", transport.ErrSessionClosed, cause)
	case errors.Is(cause, mux.ErrSessionClosed):
		cause = transport.ErrSessionClosed
	default:
		cause = fmt.Errorf("%w: %v", transport.ErrSessionClosed, cause)
	}
	s.end(cause)
	if s.idleDone != nil {
		s.idleDone()
	}
}

// end records cause as why the session ended, unless one was recorded,
// and ends the context if it was made.
func (s *Session) end(cause error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cause != nil {
		return
	}
	s.cause = cause
	if s.cancel != nil {
		s.cancel(cause)
	}
}

// Context ends when the session does; context.Cause says why.
func (s *Session) Context() context.Context {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx == nil {
		s.ctx, s.cancel = context.WithCancelCause(context.Background())
		if s.cause != nil {
			s.cancel(s.cause)
		}
	}
	return s.ctx
}

// NetConn is the connection the session runs over: the *tls.Conn for
// Server and Client.
func (s *Session) NetConn() net.Conn { return s.conn }

// LocalAddr is the local address of the underlying connection.
func (s *Session) LocalAddr() net.Addr { return s.conn.LocalAddr() }

// RemoteAddr is the peer's address.
func (s *Session) RemoteAddr() net.Addr { return s.conn.RemoteAddr() }

// NumStreams reports the streams currently open on the session.
func (s *Session) NumStreams() int { return s.mux.NumStreams() }
