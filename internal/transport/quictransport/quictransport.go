// Package quictransport is the QUIC transport: one QUIC connection (quic-go)
// per session, each tunnel stream a native QUIC bidirectional stream, so a
// lost packet stalls only the streams it carried. It also holds
// CheckUDPBuffers, the start-up check of the kernel's UDP buffer limits
// that QUIC throughput depends on.
package quictransport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/diglett/diglett/internal/printable"
	"github.com/diglett/diglett/internal/transport"
)

const (
	// initialStreamWindow is the receive window a stream starts with; it
	// grows, while the reader keeps up, to Config.StreamWindow.
	initialStreamWindow = 512 << 10
	// minConnWindow is the least connection receive window.
	minConnWindow = 64 << 20
	// handshakeIdleTimeout: quic-go abandons a handshake that is silent
	// for this long or that lasts twice as long, 10s in all: the bound the
	// gateway's TCP handshakes get by default.
	handshakeIdleTimeout = 5 * time.Second
	// streamCreditWait is how long OpenStream waits for the peer to grant
	// a stream above its limit before it fails. See OpenStream.
	streamCreditWait = time.Second
	// maxReasonLen bounds the reason sent with a session close, which has
	// to fit in one packet.
	maxReasonLen = 256
)

// timers returns quic-go's idle timeout and keepalive interval for cfg,
// such that a peer that went silent is noticed within cfg.MaxIdleTimeout of
// the last packet heard from it.
//
// quic-go's idle timer starts at the last packet received or, if later, at
// the first ack-eliciting packet sent after it (a keepalive, at the latest
// one keepalive interval after the last packet received), and runs for the
// negotiated idle timeout (the smaller of both sides'; at least three PTOs).
// Given MaxIdleTimeout as is, a dead peer was noticed up to KeepAlivePeriod
// + MaxIdleTimeout after it went silent (17.3s measured against 15s).
// quic-go is given MaxIdleTimeout - KeepAlivePeriod instead: the keepalive
// goes out within KeepAlivePeriod, the timer ends within the rest, whatever
// the peer's settings, the multiplexer's bound exactly. KeepAlivePeriod is
// at most half of MaxIdleTimeout (transport.Config.WithDefaults), so the
// idle timeout left is at least the keepalive period.
func timers(cfg transport.Config) (idle, keepAlive time.Duration) {
	cfg = cfg.WithDefaults()
	idle = cfg.MaxIdleTimeout - cfg.KeepAlivePeriod
	// quic-go sends keepalives at most every half idle timeout.
	return idle, min(cfg.KeepAlivePeriod, idle/2)
}

// quicConfig translates cfg into quic-go's configuration.
func quicConfig(cfg transport.Config) *quic.Config {
	cfg = cfg.WithDefaults()
	idle, _ := timers(cfg)
	streamWindow := uint64(cfg.StreamWindow)
	// The connection window caps the data of all streams received and not
	// yet read. A stream whose reader stalls (a visitor that stopped
	// reading) keeps its share until it is read or closed, and once the
	// stalled streams hold the whole window every other stream of the
	// session stops. The window is credit, not memory: only data actually
	// received and unread is buffered. So it is as large as we accept to
	// buffer for one session, max(4 x StreamWindow, 64 MiB): four streams
	// stalled at their full window, or 128 fresh ones, before the rest
	// slow down. And it starts at that bound: quic-go grows a window only
	// while data is read, which is exactly what stalled streams do not
	// do.
	connWindow := max(4*streamWindow, minConnWindow)
	return &quic.Config{
		HandshakeIdleTimeout: handshakeIdleTimeout,
		// A dead peer is noticed within MaxIdleTimeout; keepalives
		// (KeepAlivePeriod, at most half of it) keep a quiet session up.
		// See timers.
		MaxIdleTimeout:  idle,
		KeepAlivePeriod: cfg.KeepAlivePeriod,
		// quic-go's default of 100 concurrent streams would throttle a
		// busy tunnel; the peer waits for credit above the cap, see
		// OpenStream.
		MaxIncomingStreams:             int64(cfg.MaxIncomingStreams),
		MaxIncomingUniStreams:          -1, // none used
		InitialStreamReceiveWindow:     min(initialStreamWindow, streamWindow),
		MaxStreamReceiveWindow:         streamWindow,
		InitialConnectionReceiveWindow: connWindow,
		MaxConnectionReceiveWindow:     connWindow,
	}
}

// envBufferWarning, when true, stops quic-go from logging "failed to
// sufficiently increase receive buffer size" to the standard logger.
const envBufferWarning = "QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING"

var quietOnce sync.Once

// quietBufferWarning sets envBufferWarning, unless the environment already
// sets it, the first time a socket is handed to quic-go: the library would
// print its warning to the standard logger, bypassing the program's logs,
// while CheckUDPBuffers gives the same diagnosis, with the fix, to a caller
// who logs it. It changes the process's environment.
func quietBufferWarning() {
	quietOnce.Do(func() {
		if _, set := os.LookupEnv(envBufferWarning); !set {
			os.Setenv(envBufferWarning, "true")
		}
	})
}

// Listener accepts QUIC sessions on a UDP socket.
type Listener struct {
	tr    *quic.Transport
	ln    *quic.Listener
	pconn net.PacketConn

	mu     sync.Mutex
	closed bool
	live   int // sessions accepted and not yet ended

	shutdownOnce sync.Once
}

// ListenOptions are a listener's settings beyond transport.Config.
type ListenOptions struct {
	// ResetKey, when set, makes the listener answer a packet of a
	// connection it does not know (the process restarted, or it dropped
	// the connection after an idle timeout while the peer was frozen)
	// with a stateless reset (RFC 9000, section 10.3), so that the peer
	// learns at once instead of after its idle timeout. It must be
	// secret, and the same after a restart for the peers of the previous
	// process: ResetKey derives one from the server's private key. nil:
	// no resets.
	ResetKey *[32]byte
}

// Listen serves QUIC on pconn (a UDP socket; the gateway binds the same port
// number as its TCP agent port), which the listener owns from then on, and
// closes on failure. tlsConf is used as given (the caller sets NextProtos to
// the diglett ALPN and the certificates); TLS 1.3 is QUIC's.
func Listen(pconn net.PacketConn, tlsConf *tls.Config, cfg transport.Config, opts ListenOptions) (*Listener, error) {
	if tlsConf == nil {
		pconn.Close()
		return nil, errors.New("quic listen: no TLS configuration")
	}
	quietBufferWarning()
	tr := &quic.Transport{Conn: pconn}
	if opts.ResetKey != nil {
		key := quic.StatelessResetKey(*opts.ResetKey)
		tr.StatelessResetKey = &key
	}
	qc := quicConfig(cfg)
	// The peers' probes (see Session.probe) are datagrams.
	qc.EnableDatagrams = true
	ln, err := tr.Listen(tlsConf, qc)
	if err != nil {
		tr.Close()
		pconn.Close()
		return nil, fmt.Errorf("quic listen: %w", err)
	}
	return &Listener{tr: tr, ln: ln, pconn: pconn}, nil
}

// Accept waits for the next session whose handshake completed. After Close
// it returns an error wrapping net.ErrClosed.
func (l *Listener) Accept(ctx context.Context) (*Session, error) {
	conn, err := l.ln.Accept(ctx)
	if err != nil {
		if l.isClosed() {
			return nil, fmt.Errorf("quic accept: %w", net.ErrClosed)
		}
		return nil, fmt.Errorf("quic accept: %w", err)
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		conn.CloseWithError(quic.ApplicationErrorCode(transport.CodeShuttingDown), "listener closed")
		return nil, fmt.Errorf("quic accept: %w", net.ErrClosed)
	}
	l.live++
	l.mu.Unlock()
	s := newSession(conn, l.release)
	s.startDatagrams()
	return s, nil
}

func (l *Listener) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// release is called once by each accepted session when it ends.
func (l *Listener) release() {
	l.mu.Lock()
	l.live--
	last := l.closed && l.live == 0
	l.mu.Unlock()
	if last {
		l.shutdown()
	}
}

// Addr is the local address of the UDP socket.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Close stops accepting: handshakes in progress and sessions not yet
// accepted are refused, and Accept returns. Sessions already accepted go on
// over the shared socket (a gateway drains them when it shuts down); the
// socket is closed, and the listener's goroutines end, when the last of
// them has ended, or at once if there are none.
func (l *Listener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	idle := l.live == 0
	l.mu.Unlock()
	err := l.ln.Close()
	// Sessions that completed their handshake but were never accepted
	// are refused, so that their peers learn it at once. Once closed,
	// quic-go's Accept returns them, then an error, without waiting; the
	// timeout only bounds the loop.
	drain, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for {
		conn, aerr := l.ln.Accept(drain)
		if aerr != nil {
			break
		}
		conn.CloseWithError(quic.ApplicationErrorCode(transport.CodeShuttingDown), "listener closed")
	}
	if idle {
		l.shutdown()
	}
	return err
}

// shutdown closes the socket. quic-go's Transport.Close ends every
// connection on it without telling the peers, so it runs only once none is
// left.
func (l *Listener) shutdown() {
	l.shutdownOnce.Do(func() {
		l.tr.Close()
		l.pconn.Close()
	})
}

// Dial connects to addr (host:port over UDP) from a new UDP socket owned by
// the session (closed with it), bounded by ctx. When tlsConf has no
// ServerName, the host in addr is used.
func Dial(ctx context.Context, addr string, tlsConf *tls.Config, cfg transport.Config) (*Session, error) {
	if tlsConf == nil {
		return nil, fmt.Errorf("quic dial %s: no TLS configuration", addr)
	}
	host, raddr, err := resolve(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("quic dial %s: %w", addr, err)
	}
	if tlsConf.ServerName == "" {
		tlsConf = tlsConf.Clone()
		tlsConf.ServerName = host
	}
	network := "udp4"
	if raddr.AddrPort().Addr().Is6() {
		network = "udp6"
	}
	pconn, err := net.ListenUDP(network, nil)
	if err != nil {
		return nil, fmt.Errorf("quic dial %s: %w", addr, err)
	}
	quietBufferWarning()
	tr := &quic.Transport{Conn: pconn}
	qc := quicConfig(cfg)
	// The gateway sends the datagrams of UDP flows (see Session.HandleDatagrams).
	qc.EnableDatagrams = true
	conn, err := tr.Dial(ctx, raddr, tlsConf, qc)
	if err != nil {
		tr.Close()
		pconn.Close()
		return nil, fmt.Errorf("quic dial %s: %w", addr, describeDialErr(err, tlsConf))
	}
	s := newSession(conn, func() {
		tr.Close()
		pconn.Close()
	})
	_, every := timers(cfg)
	go s.probe(every)
	return s, nil
}

// resolve looks up addr's host within ctx and returns it with its first
// address.
func resolve(ctx context.Context, addr string) (string, *net.UDPAddr, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", nil, err
	}
	pn, err := net.DefaultResolver.LookupPort(ctx, "udp", port)
	if err != nil {
		return "", nil, err
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return "", nil, err
	}
	if len(ips) == 0 {
		return "", nil, fmt.Errorf("no address for %s", host)
	}
	return host, net.UDPAddrFromAddrPort(netip.AddrPortFrom(ips[0].Unmap(), uint16(pn))), nil
}

// tlsAlertNoALPN is the QUIC error for the TLS alert no_application_protocol
// (0x100 + alert 120).
const tlsAlertNoALPN = quic.TransportErrorCode(0x100 + 120)

// describeDialErr says in plain words why a handshake failed where quic-go's
// error is cryptic.
func describeDialErr(err error, tlsConf *tls.Config) error {
	var te *quic.TransportError
	if errors.As(err, &te) && te.ErrorCode == tlsAlertNoALPN {
		return fmt.Errorf("the server speaks none of the application protocols %q (ALPN): %w", tlsConf.NextProtos, err)
	}
	var (
		ht   *quic.HandshakeTimeoutError
		idle *quic.IdleTimeoutError
	)
	if errors.As(err, &ht) || errors.As(err, &idle) {
		return fmt.Errorf("no answer (is a QUIC server on that UDP port, and is UDP let through?): %w", err)
	}
	return err
}

// Session is a QUIC session. It implements transport.Session.
type Session struct {
	conn   *quic.Conn
	ctx    context.Context
	cancel context.CancelCauseFunc

	release     func() // frees the socket: Dial's own, or its share of the listener's
	releaseOnce sync.Once
	closeOnce   sync.Once

	datagrams     atomic.Pointer[func([]byte)] // HandleDatagrams' function
	datagramsOnce sync.Once                    // starts receiveDatagrams
}

var _ transport.DatagramSession = (*Session)(nil)

func newSession(conn *quic.Conn, release func()) *Session {
	ctx, cancel := context.WithCancelCause(context.Background())
	s := &Session{conn: conn, ctx: ctx, cancel: cancel, release: release}
	context.AfterFunc(conn.Context(), s.ended)
	return s
}

// probeSize is the payload of a probe: with the headers, a packet longer
// than the 42 bytes below which quic-go sends no stateless reset, whatever
// the connection ID length.
const probeSize = 32

// probe sends a probe, a small datagram, every interval until the session
// ends. It is the dialing side's keepalive, beside quic-go's own (a PING):
// a PING packet is too short for the peer to answer with a stateless reset
// (a packet must be longer than the reset, which must not be mistaken for a
// real packet), so an agent whose gateway restarted, or forgot it while
// the agent was frozen (SIGSTOP, a laptop asleep), would wait for its idle
// timeout. A probe gets the reset, within one interval: the ticker fires
// at once when a frozen process resumes. A peer that takes no datagrams
// gets none; quic-go's keepalives go on.
func (s *Session) probe(interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	payload := make([]byte, probeSize)
	for {
		select {
		case <-s.conn.Context().Done():
			return
		case <-t.C:
		}
		if err := s.conn.SendDatagram(payload); err != nil {
			return
		}
	}
}

// startDatagrams starts the session's receiver of datagrams, once. The
// listening side starts it at once, for the peer's probes; the dialing
// side when it is first given a handler.
func (s *Session) startDatagrams() {
	s.datagramsOnce.Do(func() { go s.receiveDatagrams() })
}

// receiveDatagrams hands each datagram to the handler, or drops it (the
// peer's probes, say), until the session ends, so that they do not fill
// quic-go's queue of received datagrams.
func (s *Session) receiveDatagrams() {
	for {
		d, err := s.conn.ReceiveDatagram(s.conn.Context())
		if err != nil {
			return
		}
		if h := s.datagrams.Load(); h != nil {
			(*h)(d)
		}
	}
}

// DatagramsEnabled says the peer takes datagrams.
func (s *Session) DatagramsEnabled() bool {
	return s.conn.ConnectionState().SupportsDatagrams.Remote
}

// SendDatagram sends p as one QUIC datagram.
func (s *Session) SendDatagram(p []byte) error {
	err := s.conn.SendDatagram(p)
	var tl *quic.DatagramTooLargeError
	if errors.As(err, &tl) {
		return fmt.Errorf("%w: %d bytes, at most %d now", transport.ErrDatagramTooLarge, len(p), tl.MaxDatagramPayloadSize)
	}
	return err
}

// HandleDatagrams sets the function given each datagram the peer sends.
func (s *Session) HandleDatagrams(h func(p []byte)) {
	if h == nil {
		s.datagrams.Store(nil)
		return
	}
	s.datagrams.Store(&h)
	s.startDatagrams()
}

// ended runs once the connection has ended, whoever ended it. When this
// side closed it, CloseWithError records why.
func (s *Session) ended() {
	if cause := context.Cause(s.conn.Context()); !closedHere(cause) {
		s.cancel(closeCause(cause))
	}
	s.releaseOnce.Do(s.release)
}

// OpenStream opens a stream to the peer. The peer's AcceptStream sees it
// once something was written to it (or it was closed).
//
// The peer grants streams up to its MaxIncomingStreams at once. When they
// are all in use, OpenStream waits for the peer to grant another (as
// streams end), but only up to a second (or ctx): a second absorbs the
// round trip in which a stream that just ended is granted again, and the
// caller soon learns that a stream above the cap is refused, as the
// transport contract says, instead of queueing behind a peer at its limit
// for as long as ctx allows.
func (s *Session) OpenStream(ctx context.Context) (transport.Stream, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("open stream: %w", err)
	}
	qs, err := s.conn.OpenStream()
	var limit *quic.StreamLimitReachedError
	if errors.As(err, &limit) {
		wctx, cancel := context.WithTimeout(ctx, streamCreditWait)
		qs, err = s.conn.OpenStreamSync(wctx)
		cancel()
		if err != nil && ctx.Err() == nil && wctx.Err() != nil {
			return nil, fmt.Errorf("open stream: %w: the peer granted no stream within %v", limit, streamCreditWait)
		}
	}
	if err != nil {
		return nil, s.wrapErr("open stream", err)
	}
	return newStream(qs, s.conn), nil
}

// AcceptStream waits for the next stream opened by the peer. A stream is
// seen once the peer has written to it (or closed it).
func (s *Session) AcceptStream(ctx context.Context) (transport.Stream, error) {
	qs, err := s.conn.AcceptStream(ctx)
	if err != nil {
		return nil, s.wrapErr("accept stream", err)
	}
	return newStream(qs, s.conn), nil
}

// wrapErr adds op to err, and says why the session ended if it has: the
// error then wraps transport.ErrSessionClosed.
func (s *Session) wrapErr(op string, err error) error {
	if s.conn.Context().Err() != nil {
		return fmt.Errorf("%s: %w", op, s.cause())
	}
	return fmt.Errorf("%s: %w", op, err)
}

func (s *Session) cause() error {
	if err := context.Cause(s.ctx); err != nil {
		return err
	}
	return closeCause(context.Cause(s.conn.Context()))
}

// CloseWithError ends the session and all its streams; the peer's
// session ends with an error carrying code and reason. It returns once the
// connection is closed, and, for a dialed session, its socket too.
func (s *Session) CloseWithError(code transport.ErrorCode, reason string) error {
	s.closeOnce.Do(func() {
		if len(reason) > maxReasonLen {
			reason = strings.ToValidUTF8(reason[:maxReasonLen], "")
		}
		// quic-go returns once the connection has ended, closed by this
		// call or, first, by something else: the peer, a stateless
		// reset, an idle timeout. (It fails the streams before it says
		// why, so a reader that saw its stream fail may well be the one
		// calling Close.)
		s.conn.CloseWithError(quic.ApplicationErrorCode(code), reason)
		connCause := context.Cause(s.conn.Context())
		if closedHere(connCause) {
			cause := transport.ErrSessionClosed
			if reason != "" {
				cause = fmt.Errorf("%w: %s", cause, reason)
			}
			s.cancel(cause)
		} else {
			s.cancel(closeCause(connCause))
		}
		s.releaseOnce.Do(s.release)
	})
	return nil
}

// closedHere reports whether err, why a connection ended, is a close by
// this side's CloseWithError.
func closedHere(err error) bool {
	var app *quic.ApplicationError
	return errors.As(err, &app) && !app.Remote
}

// Close ends the session and all its streams.
func (s *Session) Close() error { return s.CloseWithError(transport.CodeNone, "") }

// Context ends when the session does; context.Cause says why (closed here,
// closed by the peer with a code, the peer went silent...) and wraps
// transport.ErrSessionClosed.
func (s *Session) Context() context.Context { return s.ctx }

// ConnectionState reports the TLS state the session was authenticated
// with.
func (s *Session) ConnectionState() tls.ConnectionState { return s.conn.ConnectionState().TLS }

// LocalAddr is the local address of the UDP socket.
func (s *Session) LocalAddr() net.Addr { return s.conn.LocalAddr() }

// RemoteAddr is the peer's address.
func (s *Session) RemoteAddr() net.Addr { return s.conn.RemoteAddr() }

// closedError is why a session ended: it wraps transport.ErrSessionClosed
// and quic-go's error, so that callers can tell a peer's application close
// (*quic.ApplicationError, with its code) from an idle timeout.
type closedError struct {
	msg  string
	err  error
	peer *transport.PeerClosedError // set when the peer closed the session with a code
}

func (e *closedError) Error() string { return e.msg }
func (e *closedError) Unwrap() []error {
	if e.peer != nil {
		return []error{e.peer, e.err} // e.peer wraps transport.ErrSessionClosed
	}
	return []error{transport.ErrSessionClosed, e.err}
}

// closeCause describes err, quic-go's reason for the end of a connection.
func closeCause(err error) error {
	if err == nil {
		err = errors.New("connection ended")
	}
	var (
		app   *quic.ApplicationError
		te    *quic.TransportError
		idle  *quic.IdleTimeoutError
		reset *quic.StatelessResetError
		peer  *transport.PeerClosedError
		what  string
	)
	switch {
	case errors.As(err, &app):
		by := "here"
		// The peer's reason is printed and logged: made safe first.
		reason := printable.String(app.ErrorMessage, maxReasonLen)
		if app.Remote {
			by = "by the peer"
			peer = &transport.PeerClosedError{Code: transport.ErrorCode(app.ErrorCode), Reason: reason}
		}
		what = fmt.Sprintf("closed %s (code %d)", by, app.ErrorCode)
		if reason != "" {
			what += ": " + reason
		}
	case errors.As(err, &idle):
		what = "the peer went silent (idle timeout)"
	case errors.As(err, &reset):
		what = "the peer no longer knows the connection (stateless reset)"
	case errors.As(err, &te) && te.Remote && te.ErrorCode == quic.ConnectionRefused:
		what = "refused by the peer"
	case errors.As(err, &te) && te.Remote:
		what = "closed by the peer: " + printable.String(te.Error(), maxReasonLen)
	case errors.Is(err, quic.ErrTransportClosed):
		what = "socket closed"
	default:
		what = err.Error()
	}
	return &closedError{msg: transport.ErrSessionClosed.Error() + ": " + what, err: err, peer: peer}
}
