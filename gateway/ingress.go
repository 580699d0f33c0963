package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/diglett/diglett/internal/httpguard"
	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/wstransport"
)

// The HTTP ingress serves every tunnel on shared HTTP and HTTPS ports: a
// request for NAME.Domain goes to tunnel NAME. Requests are proxied with
// the standard library's reverse proxy over streams opened on the agents'
// sessions; a stream carries many requests, one after the other, and idle
// streams are kept for the next request like keep-alive connections.
//
// Each agent session has its own HTTP client (and so its own pool of idle
// streams, per tunnel). The member is picked per request (least outstanding
// requests), so a single visitor's requests spread over the group too.

// Defaults for the HTTP ingress.
const (
	DefaultResponseTimeout   = 60 * time.Second
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 120 * time.Second
	DefaultMaxHeaderBytes    = 64 << 10
	// idleStreamsPerMember bounds the idle streams a session keeps for
	// one tunnel.
	idleStreamsPerMember = 128
)

type ingress struct {
	srv     *Server
	proxy   *httputil.ReverseProxy
	sources *sourceLimiter // requests in flight per source

	httpPort, httpsPort atomic.Int32 // public ports, for the tunnels' URLs

	mu      sync.Mutex
	servers map[*http.Server]struct{}
}

func newIngress(s *Server) *ingress {
	in := &ingress{srv: s, servers: make(map[*http.Server]struct{}),
		sources: newSourceLimiter(s.cfg.MaxRequestsPerSource, s.log, warnInterval)}
	in.proxy = &httputil.ReverseProxy{
		Rewrite:      in.rewrite,
		Transport:    roundTripperFunc(in.roundTrip),
		ErrorHandler: in.proxyError,
		BufferPool:   bufferPool{},
		ErrorLog:     slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	return in
}

// connInfo is what the ingress knows of a visitor's connection.
type connInfo struct {
	https bool
	guard *httpguard.Conn // nil for HTTP/2
}

type connInfoKey struct{}

// route is the context of one proxied request.
type route struct {
	t      *tunnel
	pol    *visitorPolicy
	https  bool
	peer   netip.Addr
	body   *visitorBody // nil without a body
	remote string       // visitor address
	host   string       // the validated Host, as the backend is told it
}

type routeKey struct{}

// newHTTPServer returns the server for one ingress listener.
func (in *ingress) newHTTPServer(h http.Handler) *http.Server {
	c := in.srv.cfg
	hs := &http.Server{
		Handler:           in.guard(h),
		ReadHeaderTimeout: c.ReadHeaderTimeout,
		IdleTimeout:       c.IdleTimeout,
		MaxHeaderBytes:    c.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(in.srv.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return in.srv.ctx },
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			info := &connInfo{}
			switch x := c.(type) {
			case *tls.Conn:
				info.https = true
			case *httpguard.Conn:
				info.guard = x
				_, info.https = x.Conn.(*tls.Conn)
			}
			return context.WithValue(ctx, connInfoKey{}, info)
		},
	}
	return hs
}

// guard refuses the requests whose framing the connection's scanner found
// to be a smuggling shape. It must be the outermost handler: the scanner's
// verdicts are counted in the order requests reach it.
func (in *ingress) guard(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if info, _ := r.Context().Value(connInfoKey{}).(*connInfo); info != nil && info.guard != nil {
			if err := info.guard.Next(); err != nil {
				in.srv.log.Debug("visitor request refused", "visitor", r.RemoteAddr, "err", err)
				w.Header().Set("Connection", "close")
				httpError(w, http.StatusBadRequest, "malformed request")
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

func (in *ingress) track(hs *http.Server) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.srv.shuttingDown() {
		return false
	}
	in.servers[hs] = struct{}{}
	return true
}

func (in *ingress) untrack(hs *http.Server) {
	in.mu.Lock()
	delete(in.servers, hs)
	in.mu.Unlock()
}

// shutdown stops the ingress servers, waiting for requests in flight until
// ctx ends; with a nil ctx it closes them at once.
func (in *ingress) shutdown(ctx context.Context) {
	in.mu.Lock()
	servers := make([]*http.Server, 0, len(in.servers))
	for hs := range in.servers {
		servers = append(servers, hs)
	}
	in.mu.Unlock()
	var wg sync.WaitGroup
	for _, hs := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ctx == nil || hs.Shutdown(ctx) != nil {
				hs.Close()
			}
		}()
	}
	wg.Wait()
}

// ServeHTTPIngress serves the tunnels over plain HTTP on ln, by host name,
// until the server closes. wrap, if not nil, wraps the ingress handler (an
// ACME HTTP-01 challenge responder, say). It always closes ln.
func (s *Server) ServeHTTPIngress(ln net.Listener, wrap func(http.Handler) http.Handler) error {
	if s.cfg.Domain == "" {
		ln.Close()
		return errors.New("gateway: HTTP ingress needs a domain")
	}
	var h http.Handler = s.http
	if wrap != nil {
		h = wrap(h)
	}
	hs := s.http.newHTTPServer(h)
	if !s.http.track(hs) {
		ln.Close()
		return ErrServerClosed
	}
	defer s.http.untrack(hs)
	s.http.httpPort.Store(int32(listenerPort(ln)))
	err := hs.Serve(httpguard.NewListener(s.limitVisitors(ln)))
	if errors.Is(err, http.ErrServerClosed) {
		return ErrServerClosed
	}
	return fmt.Errorf("gateway: HTTP ingress: %w", err)
}

// ServeHTTPSIngress serves the tunnels over HTTPS on ln, with the
// certificates of tc, until the server closes. Visitors get HTTP/2 when
// they offer it. It always closes ln.
func (s *Server) ServeHTTPSIngress(ln net.Listener, tc *tls.Config) error {
	if s.cfg.Domain == "" {
		ln.Close()
		return errors.New("gateway: HTTPS ingress needs a domain")
	}
	tc = tc.Clone()
	for _, p := range []string{"h2", "http/1.1"} {
		if !slices.Contains(tc.NextProtos, p) {
			tc.NextProtos = append(tc.NextProtos, p)
		}
	}
	if tc.MinVersion == 0 {
		tc.MinVersion = tls.VersionTLS12
	}
	tc = s.agentTLS(tc)
	hs := s.http.newHTTPServer(s.http)
	hs.TLSConfig = tc
	if !s.http.track(hs) {
		ln.Close()
		return ErrServerClosed
	}
	defer s.http.untrack(hs)
	s.http.httpsPort.Store(int32(listenerPort(ln)))
	hl := newHandshakeListener(s.ctx, s.limitVisitors(ln), tc, s.cfg.ReadHeaderTimeout, s.log, s.agentWS.push)
	err := hs.Serve(hl)
	hl.wait()
	if errors.Is(err, http.ErrServerClosed) {
		return ErrServerClosed
	}
	return fmt.Errorf("gateway: HTTPS ingress: %w", err)
}

func listenerPort(ln net.Listener) int {
	if a, ok := ln.Addr().(*net.TCPAddr); ok {
		return a.Port
	}
	return 0
}

// URLs are the HTTP and HTTPS addresses of tunnel name; empty when the
// ingress is not served.
func (s *Server) URLs(name string) (httpURL, httpsURL string) {
	if s.cfg.Domain == "" {
		return "", ""
	}
	host := name + "." + s.cfg.Domain
	if p := s.http.httpPort.Load(); p != 0 {
		httpURL = "http://" + host
		if p != 80 {
			httpURL += ":" + strconv.Itoa(int(p))
		}
	}
	if p := s.http.httpsPort.Load(); p != 0 {
		httpsURL = "https://" + host
		if p != 443 {
			httpsURL += ":" + strconv.Itoa(int(p))
		}
	}
	return httpURL, httpsURL
}

// tunnelName maps a Host header (or TLS server name) to a tunnel name:
// case-insensitive, ignoring a port and a trailing dot. A host whose port
// is not a number is no tunnel's (see parseHost).
func (s *Server) tunnelName(host string) (string, bool) {
	name, _, err := s.parseHost(host)
	return name, err == nil && name != ""
}

// ServeHTTP routes one visitor request.
func (in *ingress) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	info, _ := r.Context().Value(connInfoKey{}).(*connInfo)
	if info == nil {
		info = &connInfo{https: r.TLS != nil}
	}
	// Every wait for the visitor's body is bounded, whatever the answer:
	// the server reads what a handler left unread.
	if r.Body != nil && r.Body != http.NoBody {
		tb := newTimedBody(w, r.Body, in.srv.cfg.BodyReadTimeout)
		defer tb.finish(r.ProtoMajor == 1)
		r.Body = tb
	}
	var peer netip.Addr
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		peer = ap.Addr().Unmap()
	}
	client := in.clientIP(r, peer)
	src := requestSource(client)
	if !in.sources.acquire(src) {
		w.Header().Set("Retry-After", "1")
		if r.ProtoMajor == 1 && r.ContentLength != 0 {
			// Answer at once rather than after reading the body.
			w.Header().Set("Connection", "close")
		}
		httpError(w, http.StatusTooManyRequests, "too many requests in flight from your address")
		return
	}
	defer in.sources.release(src)
	name, host, err := in.srv.parseHost(r.Host)
	if err != nil {
		if r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		httpError(w, http.StatusBadRequest, "malformed host")
		return
	}
	if name == "" {
		httpError(w, http.StatusNotFound, "no tunnel at this address")
		return
	}
	t := in.srv.reg.route(name)
	if t == nil {
		httpError(w, http.StatusNotFound, "no tunnel at this address")
		return
	}
	rt := &route{t: t, pol: t.policy(), https: info.https, remote: r.RemoteAddr, peer: peer, host: host}
	if !rt.pol.allows(client) {
		httpError(w, http.StatusForbidden, "your address may not reach this tunnel")
		return
	}
	if rt.pol.user != "" {
		u, p, ok := r.BasicAuth()
		if !ok || !rt.pol.checkPassword(u, p) {
			w.Header().Set("WWW-Authenticate", `Basic realm="`+name+`", charset="UTF-8"`)
			httpError(w, http.StatusUnauthorized, "this tunnel asks for a user and password")
			return
		}
	}
	if len(t.live()) == 0 {
		httpError(w, http.StatusServiceUnavailable, "no agent is online for this tunnel")
		return
	}
	release := in.admit(w, r, t) // MaxVisitorsPerTunnel
	if release == nil {
		return
	}
	defer release()
	if r.Body != nil && r.Body != http.NoBody {
		rt.body = &visitorBody{ReadCloser: r.Body}
		r.Body = rt.body
	}
	in.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), routeKey{}, rt)))
}

// clientIP is the visitor's address: the peer's, or, when the peer is a
// trusted proxy, the nearest address in X-Forwarded-For that is not one.
func (in *ingress) clientIP(r *http.Request, peer netip.Addr) netip.Addr {
	if !in.trusted(peer) {
		return peer
	}
	hops := r.Header.Values("X-Forwarded-For")
	ip := peer
	for i := len(hops) - 1; i >= 0; i-- {
		parts := strings.Split(hops[i], ",")
		for j := len(parts) - 1; j >= 0; j-- {
			a, err := netip.ParseAddr(strings.TrimSpace(parts[j]))
			if err != nil {
				return ip
			}
			ip = a.Unmap()
			if !in.trusted(ip) {
				return ip
			}
		}
	}
	return ip
}

func (in *ingress) trusted(ip netip.Addr) bool {
	for _, p := range in.srv.cfg.TrustedProxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// rewrite builds the request to the backend. The reverse proxy has already
// removed hop-by-hop headers (including those a visitor named in
// Connection) and Forwarded and X-Forwarded-For, -Host and -Proto; the
// other headers only a proxy may set are dropped here unless the peer is a
// trusted proxy (see clientClaimHeaders), so the ones set here cannot be
// removed or spoofed by a visitor. The host the backend is told is the
// validated one, never the visitor's text.
func (in *ingress) rewrite(pr *httputil.ProxyRequest) {
	rt := pr.In.Context().Value(routeKey{}).(*route)
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = rt.t.name
	pr.Out.Host = rt.host
	proto := "http"
	if rt.https {
		proto = "https"
	}
	h := pr.Out.Header
	// Also for h2c tunnels: their backends get HTTP/2 with prior
	// knowledge, where an Upgrade header fails the request.
	stripH2CUpgrade(h)
	forwardedFor := rt.peer.String()
	forwarded := `for=` + forwardedNode(rt.peer) + `;host="` + rt.host + `";proto=` + proto
	if in.trusted(rt.peer) {
		if prior := pr.In.Header.Values("X-Forwarded-For"); len(prior) > 0 {
			forwardedFor = strings.Join(prior, ", ") + ", " + forwardedFor
		}
		if prior := pr.In.Header.Values("Forwarded"); len(prior) > 0 {
			forwarded = strings.Join(prior, ", ") + ", " + forwarded
		}
		if v := pr.In.Header.Get("X-Forwarded-Proto"); v != "" {
			proto = v
		}
	} else {
		dropClientClaims(h)
	}
	h.Set("X-Forwarded-For", forwardedFor)
	h.Set("X-Forwarded-Host", rt.host)
	h.Set("X-Forwarded-Proto", proto)
	h.Set("Forwarded", forwarded)
	if rt.pol.user != "" {
		// The credentials were the gateway's to check, not the backend's.
		h.Del("Authorization")
	}
}

// forwardedNode writes an address as a Forwarded "for" value.
func forwardedNode(ip netip.Addr) string {
	if ip.Is6() {
		return `"[` + ip.String() + `]"`
	}
	return ip.String()
}

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

// proxyError answers a request that could not be proxied, with a status
// that tells the visitor what failed and nothing of the gateway's insides.
func (in *ingress) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	rt, _ := r.Context().Value(routeKey{}).(*route)
	log := in.srv.log.With("visitor", r.RemoteAddr, "host", r.Host)
	var de *dialError
	var ne net.Error
	switch {
	case rt != nil && rt.body != nil && errors.Is(rt.body.err(), errBodyTimeout):
		log.Debug("visitor request body stalled", "err", rt.body.err())
		if r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		httpError(w, http.StatusRequestTimeout, "the request body stalled")
	case rt != nil && rt.body != nil && rt.body.err() != nil:
		log.Debug("visitor sent a malformed body", "err", rt.body.err())
		w.Header().Set("Connection", "close")
		httpError(w, http.StatusBadRequest, "malformed request body")
	case r.Context().Err() != nil:
		log.Debug("visitor left before the response", "err", err)
		httpError(w, http.StatusBadGateway, "request canceled")
	case errors.Is(err, errNoAgent):
		httpError(w, http.StatusServiceUnavailable, "no agent is online for this tunnel")
	case errors.As(err, &de) && de.status == protocol.StatusTimeout:
		log.Debug("backend timeout", "err", err)
		httpError(w, http.StatusGatewayTimeout, "the tunnel's backend did not answer in time")
	case errors.As(err, &de) && de.status != protocol.StatusOK:
		log.Debug("backend refused", "err", err)
		httpError(w, http.StatusBadGateway, "the tunnel's backend refused the connection")
	case errors.As(err, &ne) && ne.Timeout():
		log.Debug("backend timeout", "err", err)
		httpError(w, http.StatusGatewayTimeout, "the tunnel's backend did not answer in time")
	default:
		log.Debug("proxy failed", "err", err)
		httpError(w, http.StatusBadGateway, "the tunnel's backend could not be reached")
	}
}

// httpError writes a short plain-text error page.
func httpError(w http.ResponseWriter, code int, msg string) {
	h := w.Header()
	h.Del("Content-Length")
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	fmt.Fprintf(w, "%d %s: %s\n", code, http.StatusText(code), msg)
}

// visitorBody records an error reading the visitor's request body (a bad
// chunk size, say), so that it is answered with 400 and not blamed on the
// backend.
type visitorBody struct {
	io.ReadCloser
	failed atomic.Pointer[error] // read by the handler, written by the transport
}

func (b *visitorBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		b.failed.CompareAndSwap(nil, &err)
	}
	return n, err
}

// err is the first error reading the body, if any.
func (b *visitorBody) err() error {
	if p := b.failed.Load(); p != nil {
		return *p
	}
	return nil
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

// handshakeListener does the TLS handshakes of an HTTPS listener, each in
// its own goroutine bounded by timeout, and hands the HTTP server
// connections ready to serve: HTTP/2 ones as they are, HTTP/1 ones wrapped
// in the request guard (which needs the plaintext).
type handshakeListener struct {
	net.Listener
	tls     *tls.Config
	timeout time.Duration
	log     *slog.Logger
	ctx     context.Context // ends with the server or when the listener closes
	cancel  context.CancelFunc
	agent   func(*tls.Conn) // takes WebSocket agent connections
	conns   chan net.Conn
	done    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup

	mu  sync.Mutex
	err error // why Accept fails, once done is closed
}

func newHandshakeListener(ctx context.Context, ln net.Listener, tc *tls.Config, timeout time.Duration, log *slog.Logger, agent func(*tls.Conn)) *handshakeListener {
	ctx, cancel := context.WithCancel(ctx)
	l := &handshakeListener{Listener: ln, tls: tc, timeout: timeout, log: log, ctx: ctx, cancel: cancel, agent: agent,
		conns: make(chan net.Conn), done: make(chan struct{})}
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

func (l *handshakeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		l.mu.Lock()
		defer l.mu.Unlock()
		return nil, l.err
	}
}

func (l *handshakeListener) acceptLoop() {
	defer l.wg.Done()
	for {
		raw, err := accept(l.Listener, l.done, l.log, "accept visitor")
		if err != nil {
			l.mu.Lock()
			l.err = err
			l.mu.Unlock()
			l.Close()
			return
		}
		l.wg.Add(1)
		go l.handshake(raw)
	}
}

func (l *handshakeListener) handshake(raw net.Conn) {
	defer l.wg.Done()
	tc := tls.Server(raw, l.tls)
	ctx, cancel := context.WithTimeout(l.ctx, l.timeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		l.log.Debug("visitor TLS handshake failed", "visitor", raw.RemoteAddr(), "err", err)
		raw.Close()
		return
	}
	var c net.Conn = tc
	switch tc.ConnectionState().NegotiatedProtocol {
	case "h2":
	case "acme-tls/1":
		// A certificate authority checking a TLS-ALPN challenge: the
		// handshake was the whole exchange.
		tc.Close()
		return
	case wstransport.ALPN:
		l.agent(tc)
		return
	default:
		c = httpguard.Wrap(tc)
	}
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *handshakeListener) Close() error {
	l.once.Do(func() {
		l.mu.Lock()
		if l.err == nil {
			l.err = net.ErrClosed
		}
		l.mu.Unlock()
		close(l.done)
		l.cancel()
		l.Listener.Close()
	})
	return nil
}

// wait waits for the accept loop and the handshakes in progress to end.
func (l *handshakeListener) wait() {
	l.Close()
	l.wg.Wait()
}
