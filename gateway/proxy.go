package gateway

// Forwarding a request to the agents of its tunnel: the member chosen per
// request, the streams used as keep-alive connections, the agent's status
// byte, and the bodies that let a request be retried on another member.

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/transport"
)

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// roundTrip sends a request to a member of the tunnel's group: the one with
// the fewest requests in flight. When the stream cannot be opened, or the
// agent cannot reach its backend, it tries the next member, as long as
// none of the request's body has been sent.
func (in *ingress) roundTrip(req *http.Request) (*http.Response, error) {
	rt := req.Context().Value(routeKey{}).(*route)
	var body *retryBody
	if req.Body != nil && req.Body != http.NoBody {
		body = &retryBody{rc: req.Body}
		req.Body = body
	}
	var tried []uint64
	var lastErr error
	for {
		m := rt.t.pick(tried)
		if m == nil {
			break
		}
		m.outstanding.Add(1)
		resp, err := m.httpTransport(rt.pol.h2c).RoundTrip(req)
		if err == nil {
			resp.Body = releaseBody(resp.Body, func() { m.outstanding.Add(-1) })
			return resp, nil
		}
		m.outstanding.Add(-1)
		lastErr = err
		var de *dialError
		if !errors.As(err, &de) || !de.retry || (body != nil && body.started.Load()) {
			break
		}
		tried = append(tried, m.id)
	}
	if body != nil {
		body.rc.Close()
	}
	if lastErr == nil {
		lastErr = errNoAgent
	}
	return nil, lastErr
}

// pick returns the live member with the fewest requests in flight, not in
// skip; ties go round robin.
func (t *tunnel) pick(skip []uint64) *session {
	members := t.live()
	n := len(members)
	if n == 0 {
		return nil
	}
	start := int(t.next.Add(1) % uint64(n))
	var best *session
	var load int64
	for i := range n {
		m := members[(start+i)%n]
		if slices.Contains(skip, m.id) {
			continue
		}
		if l := m.outstanding.Load(); best == nil || l < load {
			best, load = m, l
		}
	}
	return best
}

var errNoAgent = errors.New("no agent online")

// dialError is a failure to get a stream to a backend; retry says whether
// another member may do better.
type dialError struct {
	status protocol.Status // the agent's answer; StatusOK if it gave none
	retry  bool
	err    error
}

func (e *dialError) Error() string {
	if e.err != nil {
		return "open stream: " + e.err.Error()
	}
	return "agent: " + e.status.String()
}

func (e *dialError) Unwrap() error { return e.err }

// httpTransport is the session's client for HTTP requests (HTTP/2 without
// TLS when h2c): its idle connections are the session's idle streams, kept
// per tunnel (the URL host is the tunnel's name).
func (ss *session) httpTransport(h2c bool) *http.Transport {
	ss.httpMu.Lock()
	defer ss.httpMu.Unlock()
	if ss.h1 == nil {
		timeout := ss.srv.cfg.ResponseTimeout
		ss.h1 = &http.Transport{
			DialContext:           ss.dialHTTP,
			MaxIdleConnsPerHost:   idleStreamsPerMember,
			IdleConnTimeout:       90 * time.Second,
			ResponseHeaderTimeout: timeout,
			ExpectContinueTimeout: time.Second,
			// The default 4 KiB buffers: bodies bypass them in large
			// reads and writes, and an idle stream holds both.
			DisableCompression: true,
		}
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		ss.h2c = &http.Transport{
			DialContext:           ss.dialHTTP,
			Protocols:             &p,
			MaxIdleConnsPerHost:   idleStreamsPerMember,
			IdleConnTimeout:       90 * time.Second,
			ResponseHeaderTimeout: timeout,
			DisableCompression:    true,
		}
	}
	if h2c {
		return ss.h2c
	}
	return ss.h1
}

// closeIdleHTTP closes the session's idle HTTP streams.
func (ss *session) closeIdleHTTP() {
	ss.httpMu.Lock()
	h1, h2c := ss.h1, ss.h2c
	ss.httpMu.Unlock()
	if h1 != nil {
		h1.CloseIdleConnections()
		h2c.CloseIdleConnections()
	}
}

// dialHTTP opens a stream for HTTP requests to the tunnel named by addr's
// host and waits for the agent to say it reached the backend.
func (ss *session) dialHTTP(ctx context.Context, _, addr string) (net.Conn, error) {
	name, _, _ := net.SplitHostPort(addr)
	if !ss.serves(name) {
		return nil, &dialError{retry: true, err: errNoAgent}
	}
	visitor := ""
	if rt, ok := ctx.Value(routeKey{}).(*route); ok {
		visitor = rt.remote
	}
	st, err := ss.openStream(ctx, name, visitor)
	if err != nil {
		return nil, &dialError{retry: true, err: err}
	}
	status, err := readStatus(ctx, st, ss.srv.cfg.StatusTimeout)
	if err != nil {
		st.Reset()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, &dialError{status: protocol.StatusTimeout, err: err}
		}
		return nil, &dialError{retry: true, err: err}
	}
	if status != protocol.StatusOK {
		st.Close()
		return nil, &dialError{status: status, retry: status != protocol.StatusTimeout}
	}
	return st, nil
}

// readStatus reads the agent's status byte, waiting at most timeout or
// until ctx ends.
func readStatus(ctx context.Context, st transport.Stream, timeout time.Duration) (protocol.Status, error) {
	st.SetReadDeadline(time.Now().Add(timeout))
	stop := context.AfterFunc(ctx, func() { st.SetReadDeadline(time.Now()) })
	status, err := protocol.ReadStatus(st)
	if !stop() && err != nil {
		err = ctx.Err()
	}
	st.SetReadDeadline(time.Time{})
	return status, err
}

// retryBody lets a request be sent again to another member when none of
// its body was read: the transport closes the body when a dial fails, and
// that close is held back until the body has been started.
type retryBody struct {
	rc      io.ReadCloser
	started atomic.Bool
}

func (b *retryBody) Read(p []byte) (int, error) {
	b.started.Store(true)
	return b.rc.Read(p)
}

func (b *retryBody) Close() error {
	if b.started.Load() {
		return b.rc.Close()
	}
	return nil
}

// releaseBody calls release once, when the response body is closed. A
// switched-protocols body (a WebSocket, say) stays writable.
func releaseBody(rc io.ReadCloser, release func()) io.ReadCloser {
	b := releasingBody{ReadCloser: rc, release: sync.OnceFunc(release)}
	if rwc, ok := rc.(io.ReadWriteCloser); ok {
		return &releasingRWBody{releasingBody: b, w: rwc}
	}
	return &b
}

type releasingBody struct {
	io.ReadCloser
	release func()
}

func (b *releasingBody) Close() error {
	err := b.ReadCloser.Close()
	b.release()
	return err
}

type releasingRWBody struct {
	releasingBody
	w io.Writer
}

func (b *releasingRWBody) Write(p []byte) (int, error) { return b.w.Write(p) }

// bufferPool lends the reverse proxy 32 KiB copy buffers.
type bufferPool struct{}

var proxyBuffers = sync.Pool{New: func() any { return make([]byte, 32<<10) }}

func (bufferPool) Get() []byte  { return proxyBuffers.Get().([]byte) }
func (bufferPool) Put(b []byte) { proxyBuffers.Put(b) } //nolint:staticcheck // slices are what the interface lends
