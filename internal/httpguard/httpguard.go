// Package httpguard refuses HTTP/1.x requests whose header block is a
// request-smuggling shape that net/http's server would otherwise accept
// quietly: Content-Length together with Transfer-Encoding (the server drops
// the Content-Length), repeated Content-Length fields (the server keeps one
// if they agree), obsolete line folding (the server joins the lines) and
// Transfer-Encoding on HTTP/1.0 (the server ignores it).
//
// A Conn sits on the plaintext byte stream of a visitor connection, under
// the server. It passes every byte through unchanged while a scanner
// follows the request framing, and it tells the handler of each request
// whether that request must be refused:
//
//	srv := &http.Server{
//		Handler: guard(next), // the outermost handler: see Conn.Next
//		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
//			if g, ok := c.(*httpguard.Conn); ok {
//				ctx = httpguard.ContextWithConn(ctx, g)
//			}
//			return ctx
//		},
//	}
//	srv.Serve(httpguard.NewListener(ln))
//
// where guard answers 400 Bad Request with Connection: close when
// Next returns an error.
//
// The scanner is a layer of defence, not a parser the server relies on:
// where it cannot be sure to frame the stream as the server does (a
// malformed chunk, an unusual trailer, the HTTP/2 preface), it stops
// scanning for the rest of the connection and refuses nothing more.
package httpguard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
)

// ErrSmuggling is wrapped by every error refusing a request.
var ErrSmuggling = errors.New("request smuggling shape")

// The reasons for refusing a request; each wraps ErrSmuggling.
var (
	// ErrContentLengthAndChunked: Content-Length and Transfer-Encoding
	// fields together, whatever their values.
	ErrContentLengthAndChunked = fmt.Errorf("%w: Content-Length with Transfer-Encoding", ErrSmuggling)
	// ErrDuplicateContentLength: more than one Content-Length field, even
	// with the same value.
	ErrDuplicateContentLength = fmt.Errorf("%w: more than one Content-Length", ErrSmuggling)
	// ErrBadContentLength: a Content-Length that is not a plain decimal
	// number.
	ErrBadContentLength = fmt.Errorf("%w: Content-Length not a plain number", ErrSmuggling)
	// ErrBadTransferEncoding: a Transfer-Encoding other than a single
	// "chunked", or any Transfer-Encoding on HTTP/1.0.
	ErrBadTransferEncoding = fmt.Errorf("%w: Transfer-Encoding other than one chunked on HTTP/1.1", ErrSmuggling)
	// ErrLineFolding: a header line starting with a space or a tab.
	ErrLineFolding = fmt.Errorf("%w: obsolete header line folding", ErrSmuggling)
)

// Conn wraps a plaintext HTTP/1.x connection; Read passes bytes through
// unchanged while a scanner follows the request framing. The scanner never
// blocks, delays or allocates, and its memory is a fixed few hundred bytes
// whatever the stream holds.
type Conn struct {
	net.Conn // the wrapped connection

	stopped atomic.Bool // the scanner no longer follows the framing
	mu      sync.Mutex  // guards s and next
	s       scanner
	next    int // requests numbered by Next
}

var _ net.Conn = (*Conn)(nil)

// Wrap returns c with a scanner on what is read from it. c must carry
// HTTP/1.x in plaintext: a TCP connection, or a TLS connection whose
// handshake chose HTTP/1.
func Wrap(c net.Conn) *Conn {
	return &Conn{Conn: c}
}

// Read reads from the wrapped connection and scans what it read.
func (c *Conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.Scan(p[:max(n, 0)])
	return n, err
}

// Scan scans p, read from the wrapped connection's socket by other means
// than Read (a caller reading the socket itself), in order with what Read
// read before and after it.
func (c *Conn) Scan(p []byte) {
	if len(p) > 0 && !c.stopped.Load() {
		c.mu.Lock()
		c.s.scan(p)
		if !c.s.active() {
			c.stopped.Store(true)
		}
		c.mu.Unlock()
	}
}

// CloseWrite half-closes the wrapped connection if it can, as the HTTP
// server does before closing; otherwise it returns an error wrapping
// errors.ErrUnsupported.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("close write: %w", errors.ErrUnsupported)
}

// Next reports why the next request on c must be refused, or nil.
//
// The contract: the server's outermost handler calls Next exactly once for
// every request of c, in order, before anything else acts on the request.
// The HTTP/1 server serves the requests of one connection one after the
// other, so the n-th call is about the n-th request. Requests the server
// answers without calling its handler are not numbered: OPTIONS *, which
// it answers itself (the server must leave DisableGeneralOptionsHandler
// unset), and requests it rejects, after which it closes the connection.
// A call skipped for some request (say, by a wrapper that answers some
// paths itself before the call) shifts the numbering and lets a refused
// request through; a call made twice refuses a good one.
//
// A refusal is sticky: once a request is refused, Next refuses every later
// one too. The handler should answer 400 Bad Request with Connection: close,
// without reading the body, whose framing is what is in doubt.
//
// If the server hands over a request whose header block the scanner has not
// seen end, the two frame the stream differently; the scanner then stops
// for the rest of the connection rather than answer for the wrong request.
func (c *Conn) Next() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.next
	c.next++
	if n >= c.s.visible && c.s.active() {
		c.s.stop()
		c.stopped.Store(true)
	}
	return c.verdictLocked(n)
}

// Check reports why the n-th request on c (from 0, in arrival order, in
// the numbering of Next) is refused, or nil. It is nil for a request the
// scanner has not reached or did not follow. Check does not move Next on.
func (c *Conn) Check(n int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.verdictLocked(n)
}

func (c *Conn) verdictLocked(n int) error {
	err := c.s.verdict(n)
	switch {
	case err == nil:
		return nil
	case n == c.s.flagAt:
		return fmt.Errorf("request %d: %w", n, err)
	default:
		return fmt.Errorf("request %d, after refused request %d: %w", n, c.s.flagAt, err)
	}
}

// NewListener returns a listener whose Accept wraps every connection of ln
// with Wrap.
func NewListener(ln net.Listener) net.Listener {
	return listener{ln}
}

type listener struct{ net.Listener }

var _ net.Listener = listener{}

func (l listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return Wrap(c), nil
}

type connKey struct{}

// ContextWithConn returns a copy of ctx carrying c, for an http.Server's
// ConnContext.
func ContextWithConn(ctx context.Context, c *Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// FromContext returns the Conn that ContextWithConn stored in ctx.
func FromContext(ctx context.Context) (*Conn, bool) {
	c, ok := ctx.Value(connKey{}).(*Conn)
	return c, ok && c != nil
}
