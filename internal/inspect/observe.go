package inspect

import (
	"bufio"
	"errors"
	"io"
	"math"
	"net/http"
	"strings"
	"sync"
	"time"
)

const (
	// feedLimit bounds the bytes one direction of a stream holds for its
	// parser. A relay that would go past it waits for the parser, for at
	// most feedWait, then the stream stops being observed rather than slow
	// the relay down more or hold more memory.
	feedLimit = 256 << 10
	feedWait  = time.Second
	// feedKeep is the largest buffer an idle feed keeps.
	feedKeep = 16 << 10
	// maxHeaderBytes bounds the head of a request or a response.
	maxHeaderBytes = 64 << 10
	// maxPending bounds the requests of one stream waiting for their
	// responses (pipelining).
	maxPending = 32
)

var (
	errBehind  = errors.New("the inspector fell behind")
	errStopped = errors.New("not observed")
)

// feed is one direction of a stream on its way to a parser: the relay
// writes and the parser reads. When the parser is feedLimit behind, the
// relay waits for it, for feedWait at most: then the feed drops what it
// holds and ends.
type feed struct {
	mu      sync.Mutex
	cond    sync.Cond     // the parser waits on it
	room    chan struct{} // a waiting relay waits on it
	buf     []byte
	r       int   // read offset in buf
	skip    int64 // bytes still to drop as they come, unread
	closed  bool
	stopped bool
	behind  bool
}

func newFeed() *feed {
	f := &feed{room: make(chan struct{}, 1)}
	f.cond.L = &f.mu
	return f
}

// Write queues p for the parser. It never fails, and waits only when the
// parser is feedLimit behind (see feed).
func (f *feed) Write(p []byte) (int, error) {
	n := len(p)
	f.mu.Lock()
	defer f.mu.Unlock()
	var deadline *time.Timer
	for {
		if f.stopped || f.closed {
			return n, nil
		}
		if f.skip > 0 {
			d := min(f.skip, int64(len(p)))
			f.skip -= d
			p = p[d:]
			if f.skip == 0 {
				f.cond.Signal()
			}
		}
		if len(p) == 0 {
			return n, nil
		}
		if len(f.buf)-f.r+len(p) <= feedLimit || len(p) > feedLimit {
			break
		}
		if deadline == nil {
			deadline = time.NewTimer(feedWait)
			defer deadline.Stop()
		}
		f.mu.Unlock()
		select {
		case <-f.room:
			f.mu.Lock()
		case <-deadline.C:
			f.mu.Lock()
			f.behind = true
			f.stopLocked()
			return n, nil
		}
	}
	if len(f.buf)-f.r+len(p) > feedLimit {
		// A write larger than the whole bound.
		f.behind = true
		f.stopLocked()
		return n, nil
	}
	if f.r > 0 && cap(f.buf)-len(f.buf) < len(p) {
		kept := copy(f.buf, f.buf[f.r:])
		f.buf, f.r = f.buf[:kept], 0
	}
	f.buf = append(f.buf, p...)
	f.cond.Signal()
	return n, nil
}

// drop drops the next n bytes of the stream without reading them, and
// waits until they have all come: nil then, or why not.
func (f *feed) drop(n int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := min(n, int64(len(f.buf)-f.r))
	f.r += int(d)
	if f.r == len(f.buf) {
		f.buf, f.r = f.buf[:0], 0
	}
	f.madeRoom()
	f.skip = n - d
	for f.skip > 0 && !f.closed && !f.stopped {
		f.cond.Wait()
	}
	switch {
	case f.behind:
		return errBehind
	case f.stopped:
		return errStopped
	case f.skip > 0:
		return io.ErrUnexpectedEOF
	}
	return nil
}

// Close tells the parser the stream has ended.
func (f *feed) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	f.cond.Broadcast()
	return nil
}

// Read waits for bytes, the end of the stream (io.EOF) or the feed's
// stop.
func (f *feed) Read(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for f.r == len(f.buf) && !f.closed && !f.stopped {
		f.cond.Wait()
	}
	switch {
	case f.behind:
		return 0, errBehind
	case f.stopped:
		return 0, errStopped
	case f.r == len(f.buf):
		return 0, io.EOF
	}
	n := copy(p, f.buf[f.r:])
	f.r += n
	if f.r == len(f.buf) {
		f.r = 0
		f.buf = f.buf[:0]
		if cap(f.buf) > feedKeep {
			f.buf = nil
		}
	}
	f.madeRoom()
	return n, nil
}

// madeRoom wakes a relay waiting for room, if any.
func (f *feed) madeRoom() {
	select {
	case f.room <- struct{}{}:
	default:
	}
}

// stop drops what f holds and what it is given later.
func (f *feed) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopLocked()
}

func (f *feed) stopLocked() {
	f.stopped = true
	f.buf, f.r = nil, 0
	f.cond.Broadcast()
	f.madeRoom()
}

// limitedReader is an io.LimitedReader whose limit the parser moves: small
// while it reads a head, none while it reads a body.
type limitedReader struct {
	r io.Reader
	n int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errors.New("head too large")
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

// readBodyOf reads a body of f into m as readBody does; a body of a known
// length, beyond what m keeps, is dropped as it comes instead of being
// read, so that large bodies cost the inspector next to nothing. br is
// the parser's reader of f.
func readBodyOf(f *feed, br *bufio.Reader, m *Message, body io.Reader, length int64, te []string) error {
	if body == http.NoBody || len(te) > 0 || length <= BodyLimit {
		return readBody(m, body)
	}
	if err := readBody(m, io.LimitReader(body, BodyLimit)); err != nil {
		return err
	}
	rest := length - BodyLimit
	d, _ := br.Discard(int(min(rest, int64(br.Buffered()))))
	rest -= int64(d)
	err := f.drop(rest)
	if err == nil {
		m.Size = length
	} else {
		m.Size = length - f.skipped()
	}
	m.Truncated = true
	m.Complete = err == nil
	return err
}

// skipped is how many bytes a failed drop still had to drop.
func (f *feed) skipped() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.skip
}

// exchange is a request on its way to its response.
type exchange struct {
	e       *Entry
	req     *http.Request
	start   time.Time
	reqDone chan struct{} // closed once the request's body is read
}

// stream parses the HTTP/1.1 exchanges of one visitor's connection.
type stream struct {
	in              *Inspector
	tunnel, visitor string
	fromVisitor     *feed
	fromBackend     *feed
	pending         chan *exchange
}

// readRequests parses what the visitor sends, request after request,
// until the stream ends or stops being HTTP/1.1.
func (s *stream) readRequests() {
	defer close(s.pending)
	defer s.fromVisitor.stop()
	lr := &limitedReader{r: s.fromVisitor}
	br := bufio.NewReaderSize(lr, 4<<10)
	for {
		lr.n = maxHeaderBytes
		if _, err := br.Peek(1); err != nil {
			return
		}
		start := time.Now()
		req, err := http.ReadRequest(br)
		if err != nil {
			// Not HTTP/1 (raw TCP on the tunnel's port, or HTTP/2):
			// nothing to record.
			return
		}
		lr.n = math.MaxInt64
		if req.Method == "PRI" && req.ProtoMajor == 2 {
			return
		}
		x := &exchange{e: s.newEntry(req, start), req: req, start: start, reqDone: make(chan struct{})}
		s.pending <- x
		err = readBodyOf(s.fromVisitor, br, &x.e.Request, req.Body, req.ContentLength, req.TransferEncoding)
		if err != nil {
			x.e.Error = "request body: " + cause(err)
		}
		close(x.reqDone)
		if err != nil || req.Method == http.MethodConnect || req.Header.Get("Upgrade") != "" {
			// What follows is not a request, or is lost.
			return
		}
	}
}

// newEntry starts the entry of req.
func (s *stream) newEntry(req *http.Request, start time.Time) *Entry {
	return &Entry{
		Summary: Summary{
			Time:    start,
			Tunnel:  s.tunnel,
			Visitor: s.visitor,
			Method:  req.Method,
			Host:    req.Host,
			Path:    req.RequestURI,
			Proto:   req.Proto,
		},
		Request:   Message{Header: redact(req.Header)},
		rawHeader: req.Header,
	}
}

// readResponses parses what the backend answers to each request, and
// records the exchanges.
func (s *stream) readResponses() {
	defer s.fromBackend.stop()
	lr := &limitedReader{r: s.fromBackend}
	br := bufio.NewReaderSize(lr, 4<<10)
	failed := false
	for x := range s.pending {
		if failed {
			s.finish(x, "no response")
			continue
		}
		resp, err := s.readResponse(lr, br, x)
		if err != nil {
			failed = true
			s.fromVisitor.stop()
			s.finish(x, "response: "+cause(err))
			continue
		}
		x.e.Status = resp.StatusCode
		x.e.Response.Header = redact(resp.Header)
		lr.n = math.MaxInt64
		if err := readBodyOf(s.fromBackend, br, &x.e.Response, resp.Body, resp.ContentLength, resp.TransferEncoding); err != nil {
			failed = true
			s.fromVisitor.stop()
			s.finish(x, "response body: "+cause(err))
			continue
		}
		s.finish(x, "")
		if resp.StatusCode == http.StatusSwitchingProtocols ||
			(x.req.Method == http.MethodConnect && resp.StatusCode/100 == 2) {
			// The connection carries something else from now on.
			failed = true
			s.fromVisitor.stop()
		}
	}
}

// readResponse reads the head of x's final response, past 1xx ones.
func (s *stream) readResponse(lr *limitedReader, br *bufio.Reader, x *exchange) (*http.Response, error) {
	for {
		lr.n = maxHeaderBytes
		resp, err := http.ReadResponse(br, x.req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode/100 != 1 || resp.StatusCode == http.StatusSwitchingProtocols {
			return resp, nil
		}
	}
}

// finish records x once its request has been read, with why it is not
// complete when problem is not empty.
func (s *stream) finish(x *exchange, problem string) {
	<-x.reqDone
	if problem != "" && x.e.Error == "" {
		x.e.Error = problem
	}
	x.e.DurationMS = float64(time.Since(x.start).Microseconds()) / 1000
	s.in.add(x.e)
}

// cause is err's message for an entry, in the words of the page.
func cause(err error) string {
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "the connection ended first"
	case errors.Is(err, errStopped):
		return "no longer observed"
	}
	return strings.TrimPrefix(err.Error(), "http: ")
}
