// Package tlsmux is the TLS-over-TCP transport: one TLS 1.3 connection
// carrying many streams through a stream multiplexer (smux, protocol v2, with
// per-stream flow control).
package tlsmux

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/xtaci/smux"

	"github.com/diglett/diglett/internal/transport"
)

// Config tunes a session. The zero value is usable: every zero field takes
// the documented default.
type Config struct {
	// KeepAlive bounds how long a silent peer is tolerated: a keepalive
	// frame is sent every KeepAlive/3 and the session is closed when nothing
	// arrived for KeepAlive. Default 15s.
	KeepAlive time.Duration
	// MaxIncomingStreams caps the streams opened by the peer that are open
	// at once; a stream above the cap is closed at once and the session
	// survives. Default 4096.
	MaxIncomingStreams int
	// StreamWindow is the per-stream receive window in bytes. Default 1 MiB.
	StreamWindow int
	// SessionWindow is the receive buffer shared by all streams of a
	// session, in bytes. Default 8 MiB.
	SessionWindow int
}

// Defaults for Config.
const (
	DefaultKeepAlive          = 15 * time.Second
	DefaultMaxIncomingStreams = 4096
	DefaultStreamWindow       = 1 << 20
	DefaultSessionWindow      = 8 << 20
)

func (c Config) withDefaults() Config {
	if c.KeepAlive <= 0 {
		c.KeepAlive = DefaultKeepAlive
	}
	if c.MaxIncomingStreams <= 0 {
		c.MaxIncomingStreams = DefaultMaxIncomingStreams
	}
	if c.StreamWindow <= 0 {
		c.StreamWindow = DefaultStreamWindow
	}
	if c.SessionWindow <= 0 {
		c.SessionWindow = DefaultSessionWindow
	}
	if c.StreamWindow > c.SessionWindow {
		c.StreamWindow = c.SessionWindow
	}
	return c
}

func (c Config) smux() *smux.Config {
	sc := smux.DefaultConfig()
	sc.Version = 2
	sc.KeepAliveInterval = c.KeepAlive / 3
	sc.KeepAliveTimeout = c.KeepAlive
	sc.MaxReceiveBuffer = c.SessionWindow
	sc.MaxStreamBuffer = c.StreamWindow
	sc.MaxFrameSize = 32 << 10
	return sc
}

// Server performs the server side of the TLS handshake on conn (bounded by
// ctx) and starts a session over it. conn is closed on failure.
func Server(ctx context.Context, conn net.Conn, tlsConf *tls.Config, cfg Config) (*Session, error) {
	tc := tls.Server(conn, tlsConf)
	return start(ctx, conn, tc, cfg, smux.Server)
}

// Client performs the client side of the TLS handshake on conn (bounded by
// ctx) and starts a session over it. conn is closed on failure.
func Client(ctx context.Context, conn net.Conn, tlsConf *tls.Config, cfg Config) (*Session, error) {
	tc := tls.Client(conn, tlsConf)
	return start(ctx, conn, tc, cfg, smux.Client)
}

func start(ctx context.Context, raw net.Conn, tc *tls.Conn, cfg Config,
	newMux func(c io.ReadWriteCloser, cfg *smux.Config) (*smux.Session, error)) (*Session, error) {
	cfg = cfg.withDefaults()
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	if v := tc.ConnectionState().Version; v != tls.VersionTLS13 {
		raw.Close()
		return nil, fmt.Errorf("tls handshake: negotiated version %#x, need TLS 1.3", v)
	}
	ms, err := newMux(tc, cfg.smux())
	if err != nil {
		raw.Close()
		return nil, fmt.Errorf("start multiplexer: %w", err)
	}
	s := &Session{mux: ms, tls: tc, cfg: cfg, done: make(chan struct{}), accepted: make(chan *stream)}
	go func() {
		<-ms.CloseChan()
		s.Close()
	}()
	go s.acceptLoop()
	return s, nil
}

// Session is a tlsmux session. It implements transport.Session.
type Session struct {
	mux       *smux.Session
	tls       *tls.Conn
	cfg       Config
	incoming  atomic.Int64
	accepted  chan *stream
	done      chan struct{}
	closeOnce sync.Once
}

var _ transport.Session = (*Session)(nil)

// ConnectionState reports the TLS state of the session's connection.
func (s *Session) ConnectionState() tls.ConnectionState { return s.tls.ConnectionState() }

// OpenStream opens a stream to the peer.
func (s *Session) OpenStream(ctx context.Context) (transport.Stream, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	st, err := s.mux.OpenStream()
	if err != nil {
		return nil, s.wrapErr("open stream", err)
	}
	return &stream{Stream: st}, nil
}

// AcceptStream waits for the next stream opened by the peer. Streams above
// Config.MaxIncomingStreams are refused (closed) without ending the session.
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

// acceptLoop moves streams from the multiplexer to AcceptStream callers,
// refusing those above the cap. It ends with the session.
func (s *Session) acceptLoop() {
	for {
		st, err := s.mux.AcceptStream()
		if err != nil {
			s.Close()
			return
		}
		if s.incoming.Add(1) > int64(s.cfg.MaxIncomingStreams) {
			s.incoming.Add(-1)
			st.Close()
			continue
		}
		w := &stream{Stream: st, release: func() { s.incoming.Add(-1) }}
		select {
		case s.accepted <- w:
		case <-s.done:
			w.Close()
			return
		}
	}
}

func (s *Session) wrapErr(op string, err error) error {
	select {
	case <-s.done:
		return fmt.Errorf("%s: %w", op, transport.ErrSessionClosed)
	default:
	}
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

type stream struct {
	*smux.Stream
	release   func()
	closeOnce sync.Once
}

func (st *stream) Close() error {
	var err error
	st.closeOnce.Do(func() {
		err = st.Stream.Close()
		if st.release != nil {
			st.release()
		}
	})
	if errors.Is(err, io.ErrClosedPipe) {
		err = nil
	}
	return err
}
