package ingress

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

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/protocol"
)

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// roundTrip sends a request to a member of the tunnel's group: the one with
// the fewest requests in flight. When the stream cannot be opened, or the
// agent cannot reach its backend, it tries the next member, as long as
// none of the request's body has been sent.
func (in *Server) roundTrip(req *http.Request) (*http.Response, error) {
	rt := req.Context().Value(routeKey{}).(*route)
	var body *retryBody
	if req.Body != nil && req.Body != http.NoBody {
		body = &retryBody{rc: req.Body}
		req.Body = body
	}
	var tried []uint64
	var lastErr error
	for {
		m := in.pick(rt.t, tried)
		if m == nil {
			break
		}
		m.outstanding.Add(1)
		rt.x.session.Store(m.ID())
		resp, err := m.transport(rt.pol.H2C()).RoundTrip(req)
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
		tried = append(tried, m.ID())
	}
	if body != nil {
		body.rc.Close()
	}
	if lastErr == nil {
		lastErr = errNoAgent
	}
	return nil, lastErr
}

// pick returns the live member of t with the fewest requests in flight,
// not in skip; ties go round robin.
func (in *Server) pick(t gateway.HTTPTunnel, skip []uint64) *member {
	members := t.Members()
	n := len(members)
	if n == 0 {
		return nil
	}
	start := int(in.next.Add(1) % uint64(n))
	var best *member
	var load int64
	for i := range n {
		gm := members[(start+i)%n]
		if slices.Contains(skip, gm.ID()) {
			continue
		}
		m := in.member(gm)
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

// readStatus reads the agent's status byte, waiting at most timeout or
// until ctx ends.
func readStatus(ctx context.Context, st net.Conn, timeout time.Duration) (protocol.Status, error) {
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
