package ingress

// What the ingress keeps per agent session: its requests in flight (for
// the member choice) and its HTTP clients, whose idle connections are the
// session's idle streams, kept per tunnel. They go when the session leaves
// its tunnels (drains or ends).

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/protocol"
)

// member is the ingress's state of one gateway.Member.
type member struct {
	gateway.Member
	in *Server
	// outstanding counts the HTTP requests in flight on this session, for
	// least-outstanding balancing.
	outstanding atomic.Int64
	stop        func() bool // stops the drop on the member's leaving

	mu      sync.Mutex
	h1, h2c *http.Transport          // made on first use; see transport
	idle    map[string][]*fastStream // fast.go's idle streams, per tunnel
	dropped bool
}

// member returns the state of gm, made on first use. Its idle streams are
// closed, and the state forgotten, when gm's context ends.
func (in *Server) member(gm gateway.Member) *member {
	id := gm.ID()
	if v, ok := in.members.Load(id); ok {
		return v.(*member)
	}
	m := &member{Member: gm, in: in}
	if v, loaded := in.members.LoadOrStore(id, m); loaded {
		return v.(*member)
	}
	stop := context.AfterFunc(gm.Context(), func() {
		in.members.CompareAndDelete(id, m)
		m.drop()
	})
	m.mu.Lock()
	m.stop = stop
	m.mu.Unlock()
	return m
}

// drop closes the member's idle streams; the streams of requests in
// flight are closed as those requests end.
func (m *member) drop() {
	m.mu.Lock()
	m.dropped = true
	h1, h2c, stop := m.h1, m.h2c, m.stop
	idle := m.idle
	m.idle = nil
	m.mu.Unlock()
	if stop != nil {
		stop()
	}
	closeIdle(idle)
	if h1 != nil {
		h1.CloseIdleConnections()
		h2c.CloseIdleConnections()
	}
}

// transport is the session's client for HTTP requests (HTTP/2 without
// TLS when h2c): its idle connections are the session's idle streams, kept
// per tunnel (the URL host is the tunnel's name). A dropped member's
// clients keep no idle streams.
func (m *member) transport(h2c bool) *http.Transport {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h1 == nil {
		timeout := m.in.cfg.ResponseTimeout
		m.h1 = &http.Transport{
			DialContext:           m.dialHTTP,
			MaxIdleConnsPerHost:   idleStreamsPerMember,
			IdleConnTimeout:       90 * time.Second,
			ResponseHeaderTimeout: timeout,
			ExpectContinueTimeout: time.Second,
			// The default 4 KiB buffers: bodies bypass them in large
			// reads and writes, and an idle stream holds both.
			DisableCompression: true,
			DisableKeepAlives:  m.dropped,
		}
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		m.h2c = &http.Transport{
			DialContext:           m.dialHTTP,
			Protocols:             &p,
			MaxIdleConnsPerHost:   idleStreamsPerMember,
			IdleConnTimeout:       90 * time.Second,
			ResponseHeaderTimeout: timeout,
			DisableCompression:    true,
			DisableKeepAlives:     m.dropped,
		}
	}
	if h2c {
		return m.h2c
	}
	return m.h1
}

// dialHTTP opens a stream for HTTP requests to the tunnel named by addr's
// host and waits for the agent to say it reached the backend.
func (m *member) dialHTTP(ctx context.Context, _, addr string) (net.Conn, error) {
	name, _, _ := net.SplitHostPort(addr)
	if !m.Serves(name) {
		return nil, &dialError{retry: true, err: errNoAgent}
	}
	visitor := ""
	if rt, ok := ctx.Value(routeKey{}).(*route); ok {
		visitor = rt.remote
	}
	return m.openHTTP(ctx, name, visitor)
}

// openHTTP opens a stream for HTTP requests to tunnel name for visitor and
// waits for the agent to say it reached the backend.
func (m *member) openHTTP(ctx context.Context, name, visitor string) (net.Conn, error) {
	st, err := m.OpenStream(ctx, name, visitor)
	if err != nil {
		return nil, &dialError{retry: true, err: err}
	}
	status, err := readStatus(ctx, st, m.in.cfg.StatusTimeout)
	if err != nil {
		resetStream(st)
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

// resetStream abandons a stream in both directions, or closes it if it
// cannot.
func resetStream(st net.Conn) {
	if r, ok := st.(interface{ Reset() error }); ok {
		r.Reset()
		return
	}
	st.Close()
}
