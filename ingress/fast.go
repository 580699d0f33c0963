package ingress

// A connection-level forwarding path for plain HTTP/1.1 requests, in
// front of the standard server. Each visitor connection (plain, or TLS
// that chose HTTP/1.1) is read by a loop that parses request heads with
// the standard parser and forwards the requests it can (fastproxy.go); at
// the first request it cannot (HTTP/1.0, an upgrade, Expect, OPTIONS *,
// a head that does not fit its buffer, an h2c tunnel, anything unusual),
// it hands the connection, with the bytes it has read, to the standard
// server, which serves it from that request on as before. The request
// guard stays under both, and its verdicts are taken in request order.

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/diglett/diglett/internal/httpguard"
)

// fastReadSize is the size of a visitor connection's read buffer: a
// request head that does not fit goes to the standard server.
const fastReadSize = 4 << 10

// maxDiscardBody bounds the request body read and dropped, to keep the
// connection, after an answer that did not need it (as the standard
// server does).
const maxDiscardBody = 256 << 10

var visitorReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, fastReadSize) }}

// fastServer runs the forwarding path of one listener, handing what it
// does not forward to the standard server through handoff.
type fastServer struct {
	in      *Server
	https   bool
	ln      net.Listener // the visitors' listener, if the path accepts from it
	handoff *handoffListener

	// served counts the requests forwarded by this path, tapped the
	// responses written by the receive loop (resptap.go), tapLeft those
	// of them the socket did not take at once, and ended the requests the
	// receive loop ended (detach.go), rawServed the requests served
	// inside the socket's readiness callback and rawReads the reads it
	// made (rawwait.go); tests read them.
	served, tapped, tapLeft, ended atomic.Int64
	rawServed, rawReads            atomic.Int64

	closing atomic.Bool
	mu      sync.Mutex
	conns   map[*fastConn]struct{}
	wg      sync.WaitGroup
}

func (in *Server) newFastServer(https bool, addr net.Addr, ln net.Listener) *fastServer {
	return &fastServer{in: in, https: https, ln: ln, handoff: newHandoffListener(addr), conns: make(map[*fastConn]struct{})}
}

// serve serves c, wrapped in the request guard, until it closes or is
// handed over. It returns at once.
func (fs *fastServer) serve(c *httpguard.Conn) {
	fc := &fastConn{fs: fs, c: c}
	fc.pcond.L = &fc.pmu
	fs.mu.Lock()
	if fs.closing.Load() {
		fs.mu.Unlock()
		c.Close()
		return
	}
	fs.conns[fc] = struct{}{}
	fs.wg.Add(1)
	fs.mu.Unlock()
	go func() {
		defer fs.wg.Done()
		fc.serve()
	}()
}

func (fs *fastServer) forget(fc *fastConn) {
	fs.mu.Lock()
	delete(fs.conns, fc)
	fs.mu.Unlock()
}

// shutdown stops the path: idle connections close at once, the others
// after their response; it waits for them until ctx ends (a nil ctx does
// not wait), then closes those left. It returns ctx's error if some were.
func (fs *fastServer) shutdown(ctx context.Context) error {
	fs.mu.Lock()
	fs.closing.Store(true)
	for fc := range fs.conns {
		if fc.idle.Load() || ctx == nil {
			fc.c.Close()
		}
	}
	fs.mu.Unlock()
	if fs.ln != nil {
		fs.ln.Close()
	}
	fs.handoff.Close()
	if ctx == nil {
		fs.wg.Wait()
		return nil
	}
	done := make(chan struct{})
	go func() {
		fs.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		fs.mu.Lock()
		for fc := range fs.conns {
			fc.c.Close()
		}
		fs.mu.Unlock()
		<-done
		return ctx.Err()
	}
}

// fastConn is one visitor connection on the forwarding path.
type fastConn struct {
	fs   *fastServer
	c    *httpguard.Conn
	br   *bufio.Reader
	hbr  *bufio.Reader // parses a head from its bytes in br
	idle atomic.Bool   // waiting for a request

	lastPOST bool
	remote   string       // the visitor's address, formatted once for all its requests
	own      forwardedOwn // the gateway's part of its forwarded headers

	// Write-through of responses (resptap.go).
	raw      syscall.RawConn // a plain TCP visitor's socket
	rawKnown bool
	tap      respTap

	// Requests served inside the socket's readiness callback (rawwait.go).
	rawChecked, rawOK bool
	rawIn             bool // in the callback: fc.br reads the socket rawFD
	rawFD             int
	rawEmpty          bool // the callback's last read left the socket empty
	rawArmed          bool // the wait for the next request is armed
	rawPending        bool // with a request left to the tap

	// The request in flight, and whether it is left to the tap (detach.go).
	cur     fwd
	pmu     sync.Mutex
	pcond   sync.Cond // on pmu: the tap ended the request
	pstate  atomic.Int32
	endedAt time.Time // when the tap ended the last request; set before pDone
}

func (fc *fastConn) serve() {
	defer fc.fs.forget(fc)
	fc.br = visitorReaders.Get().(*bufio.Reader)
	fc.br.Reset(visitorSource{fc})
	fc.hbr = headReaders.Get().(*bufio.Reader)
	handed := false
	defer func() {
		fc.hbr.Reset(nil)
		headReaders.Put(fc.hbr)
		if !handed {
			fc.c.Close()
			fc.br.Reset(nil)
			visitorReaders.Put(fc.br)
		}
	}()
	first := true
	for {
		var r *http.Request
		if !first && fc.rawMode() {
			how, rr := fc.serveRaw()
			switch how {
			case rawClose:
				return
			case rawHandover:
				handed = fc.handover()
				return
			}
			r = rr
		}
		if r == nil {
			if !fc.waitRequest(first) {
				return
			}
			first = false
			var n, v int
			r, n, v = fc.readHead()
			switch v {
			case headClose:
				return
			case headHandover:
				handed = fc.handover()
				return
			}
			if !fc.admit(r, n) {
				return
			}
		}
		if !fc.forward(r) {
			return
		}
	}
}

// admit numbers r, whose head of n bytes is in the read buffer, with the
// request guard, and takes the head from the buffer; it answers a request
// the guard refuses and reports false.
func (fc *fastConn) admit(r *http.Request, n int) bool {
	if err := fc.c.Next(); err != nil {
		fc.fs.in.log.Debug("visitor request refused", "visitor", fc.c.RemoteAddr().String(), "err", err)
		fw := newFastWriter()
		fw.Header().Set("Connection", "close")
		httpError(fw, http.StatusBadRequest, "malformed request")
		fc.writeAnswer(fw, r, false)
		return false
	}
	fc.br.Discard(n)
	fc.lastPOST = r.Method == http.MethodPost
	fc.fs.served.Add(1)
	return true
}

// waitRequest waits for the first byte of the next request, for the idle
// timeout (the header timeout for the first request), and arms the header
// timeout. It reports false when the connection is to close. A request
// left to the tap is ended first (detach.go): the tap ends it meanwhile,
// or hands it back and interrupts the wait, or waitRequest takes it back
// when the visitor sends more first, at the response timeout, and at
// shutdown.
func (fc *fastConn) waitRequest(first bool) bool {
	cfg := &fc.fs.in.cfg
	for {
		pending, since := fc.waitStart()
		if fc.fs.closing.Load() {
			if pending {
				fc.resolve()
			}
			return false
		}
		wait := cfg.IdleTimeout
		if first {
			wait = cfg.ReadHeaderTimeout
		}
		deadline := fc.waitDeadline(since, wait, pending)
		fc.c.SetReadDeadline(deadline)
		if pending && fc.handedBack() {
			if !fc.resolve() {
				return false
			}
			continue
		}
		if fc.lastPOST {
			// Tolerance for old clients, as the standard server has: CR or
			// LF bytes after a POST body are dropped.
			peek, _ := fc.br.Peek(4)
			fc.br.Discard(leadingCRorLF(peek))
		}
		_, err := fc.br.Peek(1)
		if pending {
			// The response first, whatever woke the wait.
			if !fc.resolve() {
				return false
			}
			if err != nil && isTimeout(err) {
				continue
			}
		}
		if err != nil {
			if isTimeout(err) && time.Now().Before(deadline) {
				continue // not this wait's deadline
			}
			return false
		}
		// A request came: the last one's end no longer starts an idle
		// time (the tap may have ended it while this wait began).
		fc.endedAt = time.Time{}
		fc.idle.Store(false)
		if fc.fs.closing.Load() {
			return false
		}
		if !first {
			fc.c.SetReadDeadline(time.Now().Add(cfg.ReadHeaderTimeout))
		}
		return true
	}
}

// waitStart begins a wait for the next request: it reports whether a
// request is left to the tap, and when the wait counts from.
func (fc *fastConn) waitStart() (bool, time.Time) {
	pending := fc.pending()
	since := time.Now()
	if !pending {
		fc.idle.Store(true)
		// The idle time counts from the response's end.
		if !fc.endedAt.IsZero() {
			since, fc.endedAt = fc.endedAt, time.Time{}
		}
	}
	return pending, since
}

func leadingCRorLF(p []byte) int {
	n := 0
	for _, b := range p {
		if b != '\r' && b != '\n' {
			break
		}
		n++
	}
	return n
}

var headReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, fastReadSize) }}

// What readHead found.
const (
	headTake     = iota // a request this path forwards
	headHandover        // a request for the standard server, left unread
	headClose           // a head that did not come: close, as the standard server does
)

// readHead parses the next request's head, left in the read buffer, and
// returns it with its length if this path takes it.
func (fc *fastConn) readHead() (*http.Request, int, int) {
	n := 0
	for {
		buf, _ := fc.br.Peek(fc.br.Buffered())
		if n = headEnd(buf); n > 0 {
			break
		}
		if fc.br.Buffered() == fastReadSize {
			return nil, 0, headHandover
		}
		if _, err := fc.br.Peek(fc.br.Buffered() + 1); err != nil {
			// A timeout or a closed connection: the standard server
			// closes the connection without an answer too.
			return nil, 0, headClose
		}
	}
	r, v := fc.parseHead(n)
	return r, n, v
}

// parseHead parses the request head of n bytes at the start of the read
// buffer, and returns it if this path takes it.
func (fc *fastConn) parseHead(n int) (*http.Request, int) {
	head, _ := fc.br.Peek(n)
	r, plain := parseRequest(head)
	if !plain {
		fc.hbr.Reset(bytes.NewReader(head))
		var err error
		if r, err = http.ReadRequest(fc.hbr); err != nil {
			return nil, headHandover
		}
	}
	if !fc.takes(r, !plain) {
		return nil, headHandover
	}
	if fc.remote == "" {
		fc.remote = fc.c.RemoteAddr().String()
	}
	r.RemoteAddr = fc.remote
	return r, headTake
}

// visitorAddr is the visitor's address, as r.RemoteAddr gives it, for the
// gateway's log lines: the connection's own, which costs no allocation.
func (fc *fastConn) visitorAddr() net.Addr { return fc.c.RemoteAddr() }

// headEnd is the length of the request head at the start of p (through
// the empty line ending it), or 0 if p does not hold all of it.
func headEnd(p []byte) int {
	for i := 0; ; {
		j := bytes.IndexByte(p[i:], '\n')
		if j < 0 {
			return 0
		}
		i += j + 1
		switch {
		case i < len(p) && p[i] == '\n':
			return i + 1
		case i+1 < len(p) && p[i] == '\r' && p[i+1] == '\n':
			return i + 2
		}
	}
}

// takes reports whether this path forwards r: HTTP/1.1 in origin form,
// with neither upgrade nor Expect, a body framed by Content-Length or one
// chunked coding, one valid Host, headers the standard server would take
// (checked when fields, parseRequest having checked them otherwise), and
// a tunnel that does not ask for HTTP/2 to its backend.
func (fc *fastConn) takes(r *http.Request, fields bool) bool {
	if r.ProtoMajor != 1 || r.ProtoMinor != 1 || r.Method == http.MethodConnect || r.Method == "PRI" {
		return false
	}
	if !strings.HasPrefix(r.RequestURI, "/") {
		return false
	}
	h := r.Header
	if len(h["Upgrade"]) > 0 || len(h["Expect"]) > 0 || len(h["Http2-Settings"]) > 0 {
		return false
	}
	// ReadRequest has taken the one Host field (it refuses more) out of
	// the header.
	if r.Host == "" || !httpguts.ValidHostHeader(r.Host) {
		return false
	}
	switch len(r.TransferEncoding) {
	case 0:
	case 1:
		if r.TransferEncoding[0] != "chunked" {
			return false
		}
	default:
		return false
	}
	if fields && !validFields(h) {
		return false
	}
	in := fc.fs.in
	if name, _, err := in.gw.Route(r.Host); err == nil && name != "" {
		if t, ok := in.gw.Tunnel(name); ok && t.Visitors().H2C() {
			return false
		}
	}
	return true
}

// validFields reports whether every name and value of h is one the
// standard server takes.
func validFields(h http.Header) bool {
	for k, vs := range h {
		if !httpguts.ValidHeaderFieldName(k) {
			return false
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return false
			}
		}
	}
	return true
}

// handover gives the connection, with what is left in its read buffer, to
// the standard server. It reports whether the server took it.
func (fc *fastConn) handover() bool {
	fc.c.SetReadDeadline(time.Time{})
	hc := &handoffConn{Conn: fc.c, br: fc.br, https: fc.fs.https}
	return fc.fs.handoff.push(hc)
}

// handoffConn is a visitor connection handed to the standard server: its
// reads take the bytes already buffered first.
type handoffConn struct {
	*httpguard.Conn
	br    *bufio.Reader
	https bool
}

func (c *handoffConn) Read(p []byte) (int, error) { return c.br.Read(p) }

// handoffListener is the standard server's listener: it accepts the
// connections the forwarding path hands over, and those it never takes
// (HTTP/2).
type handoffListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

var _ net.Listener = (*handoffListener)(nil)

func newHandoffListener(addr net.Addr) *handoffListener {
	return &handoffListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

// push hands c to the server; false, with c closed, once the listener is
// closed.
func (l *handoffListener) push(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		c.Close()
		return false
	}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return l.addr }
