package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/diglett/diglett/internal/protocol"
	"github.com/pires/go-proxyproto"
)

// maxPendingHeaders caps, per listener, the connections from listed load
// balancers whose PROXY header is being read at once; beyond it a new one
// is reset at once.
const maxPendingHeaders = 256

// ErrForeignProxyHeader is what reading a visitor connection returns when
// a source not listed in Config.ProxyProtocolFrom opened it with a PROXY
// protocol header: the connection is reset.
var ErrForeignProxyHeader = errors.New("gateway: PROXY protocol header from a source not allowed to send one")

// AcceptProxyProtocol wraps ln, a listener of visitors (a tunnel's public
// TCP port, the HTTP or HTTPS port of an ingress), for
// Config.ProxyProtocolFrom. With no sources listed it returns ln itself.
//
// A connection from a listed source (a load balancer in front of the
// gateway) must open with a PROXY protocol header, version 1 or 2, within
// FirstByteTimeout: the connection is then accepted with the header's
// source as its RemoteAddr, or refused (reset) without a valid one. The
// header is read off the accept loop: Accept returns only connections
// whose header is read, and a silent balancer's connection holds up no
// other. A connection from any other source is accepted as it comes; if
// its first bytes are a PROXY protocol signature, its first Read fails
// with ErrForeignProxyHeader and it is reset. Its writes never wait, so a
// backend that speaks first is not delayed.
//
// The connections returned offer CloseWrite and Reset like a
// *net.TCPConn's.
func (s *Server) AcceptProxyProtocol(ln net.Listener) net.Listener {
	return newProxyListener(ln, s.cfg.ProxyProtocolFrom, s.cfg.FirstByteTimeout, s.log)
}

// validatePrefixes checks the sources of Config.ProxyProtocolFrom.
func validatePrefixes(from []netip.Prefix) error {
	for _, p := range from {
		if !p.IsValid() {
			return fmt.Errorf("gateway: proxy protocol source %q: want a valid CIDR", p)
		}
	}
	return nil
}

// proxyListener is a listener whose connections from the sources in from
// carry a PROXY protocol header (see AcceptProxyProtocol).
type proxyListener struct {
	net.Listener
	from    []netip.Prefix
	timeout time.Duration
	log     *slog.Logger

	results chan accepted // to Accept
	stop    chan struct{} // closed by shutdown
	once    sync.Once
	err     error // Accept's error once stopped; set before stop closes

	// inline, for a tunnel's port: no goroutine accepts; Accept does,
	// on the caller's accept loop, which parks on this listener while
	// no visitor comes (idle.go). A header read that finishes queues
	// its connection in ready and nudges the loop.
	inline *idleListener

	mu      sync.Mutex
	pending map[net.Conn]struct{} // headers being read; nil once stopped
	ready   []net.Conn            // inline: headers read, for Accept
}

// accepted is one result of the underlying Accept.
type accepted struct {
	c   net.Conn
	err error
}

func newProxyListener(ln net.Listener, from []netip.Prefix, timeout time.Duration, log *slog.Logger) net.Listener {
	if len(from) == 0 {
		return ln
	}
	if timeout <= 0 {
		timeout = DefaultFirstByteTimeout
	}
	if log == nil {
		log = slog.Default()
	}
	l := &proxyListener{
		Listener: ln, from: from, timeout: timeout, log: log,
		results: make(chan accepted),
		stop:    make(chan struct{}),
		pending: make(map[net.Conn]struct{}),
	}
	go l.run()
	return l
}

// newProxyPort is newProxyListener for a tunnel's public port whose
// accept loop parks (inline above); from is not empty.
func newProxyPort(il *idleListener, from []netip.Prefix, timeout time.Duration, log *slog.Logger) *proxyListener {
	if timeout <= 0 {
		timeout = DefaultFirstByteTimeout
	}
	return &proxyListener{
		Listener: il, from: from, timeout: timeout, log: log, inline: il,
		stop:    make(chan struct{}),
		pending: make(map[net.Conn]struct{}),
	}
}

// Accept returns the next connection whose PROXY header, if it needs
// one, has been read.
func (l *proxyListener) Accept() (net.Conn, error) {
	if l.inline != nil {
		return l.acceptInline()
	}
	select {
	case r := <-l.results:
		return r.c, r.err
	case <-l.stop:
		return nil, l.err
	}
}

// Close closes the underlying listener and the connections whose header
// is being read.
func (l *proxyListener) Close() error {
	l.shutdown(net.ErrClosed)
	return l.Listener.Close()
}

// shutdown stops the listener: Accept returns err from now on.
func (l *proxyListener) shutdown(err error) {
	l.once.Do(func() {
		l.err = err
		close(l.stop)
		l.mu.Lock()
		for c := range l.pending {
			c.Close()
		}
		for _, c := range l.ready {
			c.Close()
		}
		l.pending, l.ready = nil, nil
		l.mu.Unlock()
	})
}

// acceptInline is Accept on the caller's goroutine: a connection whose
// header was read comes first, then the next one accepted. A listed
// source's connection has its header read on a goroutine of its own, and
// is returned by a later call; the timeout of the loop's deadline, or of
// a nudge, is returned as it is when nothing is ready.
func (l *proxyListener) acceptInline() (net.Conn, error) {
	for {
		if c := l.takeReady(); c != nil {
			return c, nil
		}
		c, err := l.Listener.Accept()
		if err != nil {
			if c := l.takeReady(); c != nil {
				return c, nil
			}
			select {
			case <-l.stop:
				return nil, l.err
			default:
			}
			return nil, err
		}
		if !l.listed(addrIP(c.RemoteAddr())) {
			return &unlistedConn{Conn: c, log: l.log}, nil
		}
		if !l.track(c) {
			l.log.Debug("visitor refused: too many PROXY protocol headers being read", "source", c.RemoteAddr(), "max", maxPendingHeaders)
			reset(c)
			continue
		}
		go l.readHeader(c)
	}
}

// takeReady returns the oldest connection whose header was read, or nil.
func (l *proxyListener) takeReady() net.Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.ready) == 0 {
		return nil
	}
	c := l.ready[0]
	l.ready[0] = nil
	l.ready = l.ready[1:]
	if len(l.ready) == 0 {
		l.ready = nil
	}
	return c
}

// run accepts connections until the underlying listener fails: those of
// unlisted sources go to Accept at once, those of listed ones once their
// header is read.
func (l *proxyListener) run() {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// The caller backs off before its next Accept.
				if !l.deliver(accepted{err: err}) {
					return
				}
				continue
			}
			l.shutdown(err)
			return
		}
		src := addrIP(c.RemoteAddr())
		if !l.listed(src) {
			if !l.deliver(accepted{c: &unlistedConn{Conn: c, log: l.log}}) {
				c.Close()
				return
			}
			continue
		}
		if !l.track(c) {
			l.log.Debug("visitor refused: too many PROXY protocol headers being read", "source", c.RemoteAddr(), "max", maxPendingHeaders)
			reset(c)
			continue
		}
		go l.readHeader(c)
	}
}

// deliver hands r to Accept; false if the listener stopped first.
func (l *proxyListener) deliver(r accepted) bool {
	if l.inline != nil {
		l.mu.Lock()
		if l.pending == nil { // stopped
			l.mu.Unlock()
			return false
		}
		l.ready = append(l.ready, r.c)
		l.mu.Unlock()
		l.inline.nudge()
		return true
	}
	select {
	case l.results <- r:
		return true
	case <-l.stop:
		return false
	}
}

// listed says whether src may, and must, send a PROXY header.
func (l *proxyListener) listed(src netip.Addr) bool {
	return protocol.PrefixesContain(l.from, src)
}

// track records c as having its header read; false when the listener
// stopped or maxPendingHeaders are being read.
func (l *proxyListener) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pending == nil || len(l.pending) >= maxPendingHeaders {
		return false
	}
	l.pending[c] = struct{}{}
	return true
}

func (l *proxyListener) untrack(c net.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.pending, c)
}

// readHeader reads the PROXY header of c, a listed source's connection,
// within the timeout, and hands the connection to Accept or refuses it.
func (l *proxyListener) readHeader(c net.Conn) {
	pc := proxyproto.NewConn(c, proxyproto.WithPolicy(proxyproto.REQUIRE), proxyproto.SetReadHeaderTimeout(l.timeout))
	h := pc.ProxyHeader()
	l.untrack(c)
	var err error
	switch {
	case h == nil:
		// The header's error, kept by the connection.
		_, err = pc.Read(nil)
		if err == nil {
			err = proxyproto.ErrNoProxyProtocol
		}
	case !h.Command.IsLocal():
		if _, ok := h.SourceAddr.(*net.TCPAddr); !ok {
			err = fmt.Errorf("source %v: want a TCP address", h.SourceAddr)
		}
	}
	if err != nil {
		l.log.Debug("visitor refused: no valid PROXY protocol header from a listed load balancer", "source", c.RemoteAddr(), "err", err)
		reset(c)
		return
	}
	if !l.deliver(accepted{c: &proxiedConn{Conn: pc, raw: c}}) {
		c.Close()
	}
}

// proxiedConn is a listed source's connection after its header: its
// RemoteAddr is the header's source.
type proxiedConn struct {
	net.Conn          // the *proxyproto.Conn
	raw      net.Conn // the accepted connection
}

// CloseWrite half-closes the connection.
func (c *proxiedConn) CloseWrite() error { return closeWrite(c.raw) }

// Reset closes the connection with a reset.
func (c *proxiedConn) Reset() error { return resetConn(c.raw) }

// unlistedConn is an unlisted source's connection: its first Read fails
// if it opens with a PROXY protocol signature.
type unlistedConn struct {
	net.Conn
	log   *slog.Logger
	plain atomic.Bool // checked, and nothing left in head

	mu      sync.Mutex
	checked bool
	head    []byte // read while checking, still to be returned
}

// Read checks the first bytes for a PROXY signature, then reads on.
func (c *unlistedConn) Read(p []byte) (int, error) {
	if c.plain.Load() {
		return c.Conn.Read(p)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.checked {
		if err := c.check(); err != nil {
			return 0, err
		}
	}
	if len(c.head) > 0 {
		n := copy(p, c.head)
		c.head = c.head[n:]
		if len(c.head) == 0 {
			c.plain.Store(true)
		}
		return n, nil
	}
	c.plain.Store(true)
	return c.Conn.Read(p)
}

// check reads until the first bytes cannot be a PROXY signature, and
// refuses the connection if they are one. A visitor whose first bytes are
// the start of a signature waits for its next bytes before any reach the
// agent.
func (c *unlistedConn) check() error {
	var buf [12]byte // len(proxyproto.SIGV2), the longer signature
	n := 0
	for {
		m, err := c.Conn.Read(buf[n:])
		n += m
		switch {
		case n >= len(proxyproto.SIGV1) && bytes.HasPrefix(buf[:n], proxyproto.SIGV1),
			n == len(proxyproto.SIGV2) && bytes.Equal(buf[:n], proxyproto.SIGV2):
			c.checked = true
			c.log.Debug("visitor refused: PROXY protocol header from a source not allowed to send one", "source", c.Conn.RemoteAddr())
			resetConn(c.Conn)
			c.plain.Store(true) // reads fail on the closed connection
			return ErrForeignProxyHeader
		case !signaturePrefix(buf[:n]) || (err != nil && n > 0):
			// Not a header; an error is met again by the next Read.
			c.checked = true
			c.head = append([]byte(nil), buf[:n]...)
			return nil
		case err != nil:
			return err
		}
	}
}

// signaturePrefix says whether b is the start of a PROXY signature.
func signaturePrefix(b []byte) bool {
	return bytes.HasPrefix(proxyproto.SIGV1, b) || bytes.HasPrefix(proxyproto.SIGV2, b)
}

// CloseWrite half-closes the connection.
func (c *unlistedConn) CloseWrite() error { return closeWrite(c.Conn) }

// Reset closes the connection with a reset.
func (c *unlistedConn) Reset() error { return resetConn(c.Conn) }

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

var (
	_ net.Listener                    = (*proxyListener)(nil)
	_ interface{ CloseWrite() error } = (*proxiedConn)(nil)
	_ interface{ CloseWrite() error } = (*unlistedConn)(nil)
	_ interface{ Reset() error }      = (*proxiedConn)(nil)
	_ interface{ Reset() error }      = (*unlistedConn)(nil)
)
