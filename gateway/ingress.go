package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/diglett/diglett/internal/httpguard"
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
