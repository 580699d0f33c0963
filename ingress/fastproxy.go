package ingress

// Forwarding one request on fast.go's path: routed and refused exactly as
// ServeHTTP does, its head rewritten as the reverse proxy's is, then the
// head and the body (raw, by its framing) written to a pooled stream, and
// the response head read back and relayed with its body, raw too.

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// maxInterim bounds the 1xx responses relayed before the final one.
const maxInterim = 5

var (
	writers  = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
	copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
	headBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1<<10); return &b }}
	// Empty boxes for headBufsPut, which puts back a buffer that grew as
	// a slice: boxing it anew would cost an allocation per response.
	headBoxes  = sync.Pool{New: func() any { return new([]byte) }}
	errAborted = errors.New("request body aborted")
)

// hopHeaders are removed from requests and responses as the reverse proxy
// removes them, with those named in Connection.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func removeHopHeaders(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, f := range hopHeaders {
		delete(h, f)
	}
}

// bodyState is how far a request body went.
type bodyState struct {
	read    atomic.Bool // all of it was read from the visitor
	started atomic.Bool // some of it was read
	aborted atomic.Bool // its copy was stopped: its errors are not the visitor's
}

// fwdBlock is what a request of the fast path records and answers with,
// and its route, in one allocation rather than four: fwd points into it,
// and whatever outlives the request (a detached response, say) keeps the
// whole block.
type fwdBlock struct {
	x   exchange
	rec recorder
	fw  fastWriter
	rt  route
}

// fwd is one request on its way to the tunnel: what forwarding it needs
// until it is done, through retries, and, when its response is left to
// the tap (detach.go), after the connection's goroutine went on.
type fwd struct {
	r       *http.Request
	x       *exchange
	fw      *fastWriter
	rt      *route
	hasBody bool
	body    *bodyState
	hb      *[]byte // the head for the backend
	tried   []uint64
	fresh   bool
	lastErr error
	// The attempt under way.
	m      *member
	st     *fastStream
	reused bool
	tp     tapper // armed for the response, or nil
}

// forward serves r, whose head has been read, and reports whether the
// connection stays open for the next request.
func (fc *fastConn) forward(r *http.Request) bool {
	in := fc.fs.in
	f := &fc.cur
	blk := &fwdBlock{}
	*f = fwd{r: r, tried: f.tried[:0], fw: &blk.fw, hasBody: r.ContentLength != 0}
	blk.x = exchange{start: time.Now(), rec: &blk.rec}
	blk.rec.ResponseWriter = f.fw
	f.x = &blk.x
	if f.hasBody {
		f.x.body = &countingBody{}
	}
	rt := in.routeRequest(f.x.rec, r, fc.fs.https, f.x, fc.visitorAddr(), &blk.rt)
	if rt == nil {
		keep := fc.answer(f.fw, r, f.hasBody, nil)
		in.finish(f.x, r)
		return keep
	}
	f.rt = rt
	if f.hasBody {
		f.body = &bodyState{}
		rt.body = &visitorBody{}
	}
	f.hb = headBufs.Get().(*[]byte)
	*f.hb = in.requestHead((*f.hb)[:0], r, rt, &fc.own)
	return fc.attempts(f)
}

// teTrailers is the Te field a request keeps when it names trailers;
// never changed.
var teTrailers = []string{"trailers"}

// requestHead appends the head of r for the backend, rewritten as the
// reverse proxy rewrites a request (rewrite): without hop-by-hop fields,
// with the forwarded fields the gateway vouches for. It changes r.Header,
// but writes the forwarded fields into the head only. own keeps the
// gateway's part of them for the connection's next request.
func (in *Server) requestHead(b []byte, r *http.Request, rt *route, own *forwardedOwn) []byte {
	fv := in.forwardedCached(r.Header, rt, own)
	te := httpgutsTrailers(r.Header["Te"])
	removeHopHeaders(r.Header)
	for _, k := range [...]string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Content-Length"} {
		delete(r.Header, k)
	}
	if te {
		r.Header["Te"] = teTrailers
	}
	clearForwarded(r.Header, rt, fv)
	return appendRequestHead(b, r, rt, &fv)
}

// attempts sends f's request to the tunnel's members until one answers,
// or answers the visitor with the last error, and reports whether the
// connection stays open. A request whose response is left to the tap
// returns true at once: the tap, or resolve, ends it.
func (fc *fastConn) attempts(f *fwd) bool {
	in := fc.fs.in
	for {
		m := in.pick(f.rt.t, f.tried)
		if m == nil {
			break
		}
		m.outstanding.Add(1)
		f.x.session.Store(m.ID())
		st, reused, err := fc.stream(m, f.rt, f.fresh)
		if err != nil {
			m.outstanding.Add(-1)
			f.lastErr = err
			var de *dialError
			if !errors.As(err, &de) || !de.retry {
				break
			}
			f.tried = append(f.tried, m.ID())
			continue
		}
		f.m, f.st, f.reused = m, st, reused
		keep, stale, err := fc.exchange(f)
		if err == errDetached {
			return true
		}
		if keep, retry := fc.settle(f, keep, stale, err); !retry {
			return keep
		}
	}
	return fc.failed(f)
}

// settle ends an attempt with exchange's results: the request is done,
// or failed, or (retry) is to be sent again on a fresh stream.
func (fc *fastConn) settle(f *fwd, keep, stale bool, err error) (bool, bool) {
	f.m.outstanding.Add(-1)
	if err == nil {
		fc.done(f)
		return keep, false
	}
	f.lastErr = err
	if stale {
		f.fresh = true
		return false, true
	}
	return fc.failed(f), false
}

// failed answers the visitor with f's last error.
func (fc *fastConn) failed(f *fwd) bool {
	in := fc.fs.in
	if f.lastErr == nil {
		f.lastErr = errNoAgent
	}
	in.proxyError(f.x.rec, f.r.WithContext(context.WithValue(in.ctx, routeKey{}, f.rt)), f.lastErr)
	keep := fc.answer(f.fw, f.r, f.hasBody, f.body)
	fc.done(f)
	return keep
}

// done ends f's request: its route released, its access line and metrics.
func (fc *fastConn) done(f *fwd) {
	headBufs.Put(f.hb)
	fc.fs.in.releaseRoute(f.rt)
	fc.fs.in.finish(f.x, f.r)
}

func httpgutsTrailers(te []string) bool {
	for _, v := range te {
		for tok := range strings.SplitSeq(v, ",") {
			if t := textproto.TrimString(tok); strings.EqualFold(t, "trailers") {
				return true
			}
		}
	}
	return false
}

// stream returns an idle stream of m for the tunnel, or opens one (fresh
// forces a new one); reused says which.
func (fc *fastConn) stream(m *member, rt *route, fresh bool) (*fastStream, bool, error) {
	name := rt.t.Name()
	if !fresh {
		for {
			s := m.takeIdle(name)
			if s == nil {
				break
			}
			if s.alive() {
				return s, true, nil
			}
			s.close(false)
		}
	}
	if !m.Serves(name) {
		return nil, false, &dialError{retry: true, err: errNoAgent}
	}
	c, err := m.openHTTP(fc.fs.in.ctx, name, rt.remote)
	if err != nil {
		return nil, false, err
	}
	return newFastStream(c, m, name), false, nil
}

// appendRequestHead appends the head of r to the backend: its request
// line, the validated host, its headers, the forwarded ones of fv (if not
// nil) and its body's framing.
func appendRequestHead(b []byte, r *http.Request, rt *route, fv *forwardedValues) []byte {
	b = append(b, r.Method...)
	b = append(b, ' ')
	b = append(b, r.URL.RequestURI()...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, rt.host...)
	b = append(b, "\r\n"...)
	b = appendHeader(b, r.Header)
	if fv != nil {
		b = appendForwarded(b, rt, *fv)
	}
	switch {
	case r.ContentLength < 0:
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
		if len(r.Trailer) > 0 {
			b = appendTrailerKeys(b, r.Trailer)
		}
	case r.ContentLength > 0 || r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch:
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, r.ContentLength, 10)
		b = append(b, "\r\n"...)
	}
	return append(b, "\r\n"...)
}

func appendTrailerKeys(b []byte, t http.Header) []byte {
	b = append(b, "Trailer: "...)
	first := true
	for k := range t {
		if !first {
			b = append(b, ", "...)
		}
		first = false
		b = append(b, k...)
	}
	return append(b, "\r\n"...)
}

// appendHeader appends h's fields, with any CR or LF in a value written
// as a space (as the standard client does).
func appendHeader(b []byte, h http.Header) []byte {
	for k, vs := range h {
		for _, v := range vs {
			b = appendField(b, k, v)
		}
	}
	return b
}

// appendField appends one field, with any CR or LF in its value written as
// a space.
func appendField(b []byte, k, v string) []byte {
	b = append(b, k...)
	b = append(b, ": "...)
	start := len(b)
	b = append(b, textproto.TrimString(v)...)
	for i := start; i < len(b); i++ {
		if b[i] == '\r' || b[i] == '\n' {
			b[i] = ' '
		}
	}
	return append(b, "\r\n"...)
}

// exchange sends r on st and relays the response. With err nil, the
// response was relayed (or cut after it started: keep is then false);
// otherwise nothing was written to the visitor, and stale says that st, a
// reused stream, failed before any answer to a request that may be sent
// again.
func (fc *fastConn) exchange(f *fwd) (keep, stale bool, err error) {
	in := fc.fs.in
	r, rt, st, reused, x, body := f.r, f.rt, f.st, f.reused, f.x, f.body
	sw := writers.Get().(*bufio.Writer)
	sw.Reset(st)
	defer func() {
		sw.Reset(nil)
		writers.Put(sw)
	}()
	sw.Write(*f.hb)
	var bc *bodyCopy
	// The response may go straight to the visitor (resptap.go) when the
	// request is all sent before it is read.
	var tp tapper
	switch {
	case body == nil && fc.detachable(r):
		// The goroutine need not wait for the response: the tap may end
		// the request (detach.go).
		st.SetReadDeadline(time.Now().Add(in.cfg.ResponseTimeout))
		tp = fc.armTap(st, r, true)
		f.tp = tp
		err := sw.Flush()
		if tp != nil {
			switch fc.detach(err == nil) {
			case detached:
				return false, false, errDetached
			case tapTook:
				return fc.tapped(st, r, x, body)
			}
			tp = nil // disarmed, and took nothing
		}
		if err != nil {
			st.close(true)
			return false, reused && replayable(r), err
		}
	case body == nil:
		tp = fc.armTap(st, r, false)
		if err := sw.Flush(); err != nil {
			if tp != nil && tp.ClearTap() {
				return fc.tapped(st, r, x, body)
			}
			st.close(true)
			return false, reused && replayable(r), err
		}
		st.SetReadDeadline(time.Now().Add(in.cfg.ResponseTimeout))
	case r.ContentLength > 0 && int64(fc.br.Buffered()) >= r.ContentLength:
		// All of the body is here: no need to wait for the visitor.
		tp = fc.armTap(st, r, false)
		err := fc.sendBody(sw, r, rt, x, body)
		if err == nil {
			err = sw.Flush()
		}
		if err != nil {
			if tp != nil && tp.ClearTap() {
				return fc.tapped(st, r, x, body)
			}
			st.close(true)
			return false, false, err
		}
		st.SetReadDeadline(time.Now().Add(in.cfg.ResponseTimeout))
	default:
		// The backend may answer before the body ends, as the standard
		// client lets it: the body goes in its own goroutine.
		bc = &bodyCopy{done: make(chan error, 1)}
		go func() {
			err := fc.sendBody(sw, r, rt, x, body)
			if err == nil {
				err = sw.Flush()
			}
			if err != nil {
				resetStream(st.Conn) // ends the wait for the response
			} else {
				bc.mu.Lock()
				if !bc.headRead {
					st.SetReadDeadline(time.Now().Add(in.cfg.ResponseTimeout))
				}
				bc.mu.Unlock()
			}
			bc.done <- err
		}()
	}
	return fc.respond(f, tp, bc)
}

// bodyCopy is a request body copied by a goroutine of its own while the
// response is awaited.
type bodyCopy struct {
	// The response timeout starts once the body is sent, unless the
	// response head came first: mu orders the two.
	mu       sync.Mutex
	headRead bool
	done     chan error
}

// headCame lifts the response timeout once the response head came, and
// keeps the body's end from setting it again.
func (bc *bodyCopy) headCame(st *fastStream) {
	if bc == nil {
		st.SetReadDeadline(time.Time{})
		return
	}
	bc.mu.Lock()
	bc.headRead = true
	st.SetReadDeadline(time.Time{})
	bc.mu.Unlock()
}

// stop ends the body's copy if it is still going, and waits for it.
func (bc *bodyCopy) stop(fc *fastConn, st *fastStream, body *bodyState) {
	if bc == nil || bc.done == nil {
		return
	}
	select {
	case <-bc.done:
	default:
		body.aborted.Store(true)
		fc.c.SetReadDeadline(longAgo)
		resetStream(st.Conn)
		<-bc.done
	}
	bc.done = nil
}

// respond reads the response to f's request from its stream (unless the
// tap tp took it) and relays it to the visitor; the rest of exchange.
func (fc *fastConn) respond(f *fwd, tp tapper, bc *bodyCopy) (keep, stale bool, err error) {
	in := fc.fs.in
	r, st, reused, x, body := f.r, f.st, f.reused, f.x, f.body
	vw := writers.Get().(*bufio.Writer)
	vw.Reset(fc.c)
	defer func() {
		vw.Reset(nil)
		writers.Put(vw)
	}()
	resp, b, err := fc.readResponse(st, r, vw)
	if tp != nil && tp.ClearTap() {
		// The tap wrote the response: the read met ErrTapped, or a
		// deadline as it did.
		if err == nil {
			headBufsPut(b)
		}
		return fc.tapped(st, r, x, body)
	}
	if err != nil {
		bc.stop(fc, st, body)
		st.close(true)
		if errors.Is(err, errInterimSent) {
			return false, false, nil
		}
		return false, reused && body == nil && replayable(r) && !isTimeout(err), err
	}
	bc.headCame(st)

	chunked, length := resp.chunked, resp.length
	closeAfter := r.Close || (!chunked && length < 0)
	if closeAfter {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "\r\n"...)
	vw.Write(b)
	headBufsPut(b)
	x.rec.status = resp.code

	buf := copyBufs.Get().(*[]byte)
	var n int64
	var rerr, werr error
	switch {
	case chunked:
		n, rerr, werr = relayChunked(vw, st.br, *buf, nil)
	case length != 0:
		n, rerr, werr = relayLength(vw, st.br, *buf, length, nil)
		if length < 0 && rerr == io.EOF {
			rerr = nil
		}
	}
	copyBufs.Put(buf)
	if werr == nil {
		werr = vw.Flush()
	}
	x.rec.written = n
	if rerr != nil || werr != nil {
		in.log.Debug("response cut", "visitor", r.RemoteAddr, "host", r.Host, "err", errors.Join(rerr, werr))
		bc.stop(fc, st, body)
		st.close(true)
		return false, false, nil
	}
	reuse := !closeAfter && !resp.close && st.br.Buffered() == 0
	if bc != nil && bc.done != nil {
		select {
		case berr := <-bc.done:
			reuse = reuse && berr == nil
		default:
			// The backend answered before the body ended: the stream
			// cannot carry another request.
			reuse = false
			bc.stop(fc, st, body)
		}
	}
	if body != nil && !body.read.Load() {
		closeAfter = true
	}
	if reuse {
		st.m.putIdle(st)
	} else {
		st.close(true)
	}
	return !closeAfter, false, nil
}

// headBufsGet takes a buffer of headBufs, empty.
func headBufsGet() []byte {
	box := headBufs.Get().(*[]byte)
	b := (*box)[:0]
	*box = nil
	headBoxes.Put(box)
	return b
}

// headBufsPut puts b, from headBufsGet, back.
func headBufsPut(b []byte) {
	if b == nil {
		return
	}
	box := headBoxes.Get().(*[]byte)
	*box = b
	headBufs.Put(box)
}

// replayable reports whether a request without a body may be sent again
// after a reused stream failed (as the standard client decides).
func replayable(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return len(r.Header["Idempotency-Key"]) > 0 || len(r.Header["X-Idempotency-Key"]) > 0
}

func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

// errInterimSent: the response failed after an interim (1xx) response
// was relayed to the visitor, who cannot be answered anymore.
var errInterimSent = errors.New("response failed after an interim response")

// readResponse reads the final response head from st, relaying interim
// (1xx) responses to the visitor through vw. It returns the head for the
// visitor but its Connection field and its empty line, in a buffer of
// headBufs. The common head is read by scanResponseHead; any other goes
// through the standard reader.
func (fc *fastConn) readResponse(st *fastStream, r *http.Request, vw *bufio.Writer) (respHead, []byte, error) {
	h, b, ok, err := scanResponseHead(st.br, r.Method, headBufsGet())
	if err != nil {
		headBufsPut(b)
		return h, nil, err
	}
	if ok {
		return h, b, nil
	}
	resp, err := fc.readResponseStd(st, r, vw)
	if err != nil {
		headBufsPut(b)
		return h, nil, err
	}
	h = respHead{code: resp.StatusCode, length: resp.ContentLength,
		close: resp.Close || !resp.ProtoAtLeast(1, 1)}
	bodyless := bodylessResponse(r.Method, resp.StatusCode)
	h.chunked = !bodyless && len(resp.TransferEncoding) > 0
	if bodyless {
		h.length = 0
	}
	removeHopHeaders(resp.Header)
	b = appendStatusLine(b, resp.StatusCode)
	b = appendHeader(b, resp.Header)
	if _, ok := resp.Header["Date"]; !ok {
		b = appendDate(b)
	}
	if h.chunked {
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
		if len(resp.Trailer) > 0 {
			b = appendTrailerKeys(b, resp.Trailer)
		}
	}
	return h, b, nil
}

// readResponseStd is readResponse through the standard reader.
func (fc *fastConn) readResponseStd(st *fastStream, r *http.Request, vw *bufio.Writer) (*http.Response, error) {
	for i := 0; ; i++ {
		resp, err := http.ReadResponse(st.br, r)
		if err != nil {
			if i > 0 {
				return nil, errInterimSent
			}
			return nil, err
		}
		code := resp.StatusCode
		if code >= 200 {
			if len(resp.TransferEncoding) > 0 && (len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked") {
				return nil, errors.New("unsupported transfer encoding")
			}
			return resp, nil
		}
		if code == http.StatusSwitchingProtocols || i == maxInterim {
			if i > 0 {
				return nil, errInterimSent
			}
			return nil, errors.New("unexpected interim response")
		}
		removeHopHeaders(resp.Header)
		b := appendStatusLine(headBufsGet(), code)
		b = appendHeader(b, resp.Header)
		b = append(b, "\r\n"...)
		vw.Write(b)
		headBufsPut(b)
		if err := vw.Flush(); err != nil {
			return nil, errInterimSent
		}
	}
}

func appendStatusLine(b []byte, code int) []byte {
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, ' ')
	if text := http.StatusText(code); text != "" {
		b = append(b, text...)
	} else {
		b = append(b, "status code "...)
		b = strconv.AppendInt(b, int64(code), 10)
	}
	return append(b, "\r\n"...)
}

// sendBody copies the request body from the visitor to sw by its
// framing, counting it for the access log; a visitor's failure is
// recorded in rt.body for the answer.
func (fc *fastConn) sendBody(sw *bufio.Writer, r *http.Request, rt *route, x *exchange, body *bodyState) error {
	timeout := fc.fs.in.cfg.BodyReadTimeout
	wait := func() {
		body.started.Store(true)
		fc.c.SetReadDeadline(time.Now().Add(timeout))
	}
	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	var n int64
	var rerr, werr error
	if r.ContentLength < 0 {
		n, rerr, werr = relayChunked(sw, fc.br, *buf, wait)
	} else {
		n, rerr, werr = relayLength(sw, fc.br, *buf, r.ContentLength, wait)
	}
	body.started.Store(true)
	x.body.n.Add(n)
	if rerr != nil {
		if body.aborted.Load() {
			return errAborted
		}
		if errors.Is(rerr, os.ErrDeadlineExceeded) {
			rerr = errBodyTimeout
		} else if rerr == io.EOF {
			rerr = io.ErrUnexpectedEOF
		}
		rt.body.failed.CompareAndSwap(nil, &rerr)
		return rerr
	}
	if werr != nil {
		return werr
	}
	body.read.Store(true)
	return nil
}

// relayLength copies n bytes (until EOF if n < 0) from src to dst,
// flushing dst before each read that would wait; wait, if not nil, is
// called before such a read. It returns the bytes copied, and the error
// reading src (io.EOF if it ended early) or writing dst.
func relayLength(dst *bufio.Writer, src *bufio.Reader, buf []byte, n int64, wait func()) (int64, error, error) {
	var done int64
	for n < 0 || done < n {
		if src.Buffered() == 0 {
			if err := dst.Flush(); err != nil {
				return done, nil, err
			}
			if wait != nil {
				wait()
			}
		}
		p := buf
		if n >= 0 && int64(len(p)) > n-done {
			p = p[:n-done]
		}
		k, err := src.Read(p)
		if k > 0 {
			done += int64(k)
			if _, werr := dst.Write(p[:k]); werr != nil {
				return done, nil, werr
			}
		}
		if err != nil {
			return done, err, nil
		}
	}
	return done, nil, nil
}

// relayChunked copies a chunked body, encoding and trailer as they are,
// from src to dst, as relayLength does; it returns the bytes of chunk
// data, and errBadChunk for a body it cannot follow.
func relayChunked(dst *bufio.Writer, src *bufio.Reader, buf []byte, wait func()) (int64, error, error) {
	var s chunkScanner
	for !s.done() {
		if src.Buffered() == 0 {
			if err := dst.Flush(); err != nil {
				return s.data, nil, err
			}
			if wait != nil {
				wait()
			}
			if left := s.dataLeft(); left >= uint64(src.Size()) {
				// Chunk data larger than the buffer: read it directly.
				p := buf
				if uint64(len(p)) > left {
					p = p[:left]
				}
				k, err := src.Read(p)
				if k > 0 {
					s.scan(p[:k])
					if _, werr := dst.Write(p[:k]); werr != nil {
						return s.data, nil, werr
					}
				}
				if err != nil {
					return s.data, err, nil
				}
				continue
			}
			if _, err := src.Peek(1); err != nil {
				return s.data, err, nil
			}
		}
		p, _ := src.Peek(src.Buffered())
		k, err := s.scan(p)
		if _, werr := dst.Write(p[:k]); werr != nil {
			return s.data, nil, werr
		}
		src.Discard(k)
		if err != nil {
			return s.data, err, nil
		}
	}
	return s.data, nil, nil
}

// answer writes fw, the gateway's own answer to r, and reports whether
// the connection stays open: a body the answer left unread is read and
// dropped first, up to maxDiscardBody, as the standard server does.
func (fc *fastConn) answer(fw *fastWriter, r *http.Request, hasBody bool, body *bodyState) bool {
	keep := !r.Close && !headerHasToken(fw.h["Connection"], "close")
	if hasBody && keep && body != nil && body.started.Load() && !body.read.Load() {
		keep = false
	}
	if !fc.writeAnswer(fw, r, keep) || !keep {
		return false
	}
	if hasBody && (body == nil || !body.started.Load()) {
		if r.ContentLength > maxDiscardBody {
			return false
		}
		timeout := fc.fs.in.cfg.BodyReadTimeout
		wait := func() { fc.c.SetReadDeadline(time.Now().Add(timeout)) }
		dw := bufio.NewWriterSize(io.Discard, 16)
		buf := copyBufs.Get().(*[]byte)
		defer copyBufs.Put(buf)
		var n int64
		var rerr error
		if r.ContentLength < 0 {
			n, rerr, _ = relayChunked(dw, fc.br, *buf, wait)
		} else {
			n, rerr, _ = relayLength(dw, fc.br, *buf, r.ContentLength, wait)
		}
		return rerr == nil && n <= maxDiscardBody
	}
	return true
}

func headerHasToken(vs []string, token string) bool {
	for _, v := range vs {
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(textproto.TrimString(tok), token) {
				return true
			}
		}
	}
	return false
}

// writeAnswer writes fw's response to the visitor, with Connection: close
// unless keep. It reports whether the write succeeded.
func (fc *fastConn) writeAnswer(fw *fastWriter, r *http.Request, keep bool) bool {
	h := fw.Header()
	if !keep {
		h.Set("Connection", "close")
	}
	if _, ok := h["Date"]; !ok {
		h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	}
	code := fw.code
	if code == 0 {
		code = http.StatusOK
	}
	b := appendStatusLine(nil, code)
	b = appendHeader(b, h)
	if r == nil || r.Method != http.MethodHead {
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, int64(len(fw.body)), 10)
		b = append(b, "\r\n\r\n"...)
		b = append(b, fw.body...)
	} else {
		b = append(b, "\r\n"...)
	}
	_, err := fc.c.Write(b)
	return err == nil
}

// fastWriter is the ResponseWriter of the gateway's own answers on the
// forwarding path (refusals and errors): short bodies, written at once
// with their length.
type fastWriter struct {
	h    http.Header
	code int
	body []byte
}

var _ http.ResponseWriter = (*fastWriter)(nil)

func (w *fastWriter) Header() http.Header {
	if w.h == nil {
		w.h = make(http.Header)
	}
	return w.h
}

func (w *fastWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}

func (w *fastWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	w.body = append(w.body, p...)
	return len(p), nil
}

func newFastWriter() *fastWriter { return &fastWriter{} }
