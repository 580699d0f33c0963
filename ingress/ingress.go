// Package ingress is diglett's HTTP(S) ingress: it serves every tunnel of
// a gateway on shared HTTP and HTTPS ports, by host name (a request for
// NAME.Domain goes to tunnel NAME). Plain HTTP/1.1 requests take a
// connection-level forwarding path (fast.go) that passes heads and bodies
// to the agents as raw bytes; everything else is proxied with the standard
// library's reverse proxy. Both go over streams opened on the agents'
// sessions; a stream carries many requests, one after the other, and idle
// streams are kept for the next request like keep-alive connections.
//
// Each agent session has its own HTTP client (and so its own pool of idle
// streams, per tunnel). The member is picked per request (least
// outstanding requests), so a single visitor's requests spread over the
// group too.
//
// The ingress reaches the gateway only through the Gateway interface,
// which *gateway.Server implements; the gateway knows nothing of the
// ingress.
package ingress

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

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/accept"
	"github.com/diglett/diglett/internal/httpguard"
	"github.com/diglett/diglett/internal/source"
)

// Gateway is what the ingress needs of the gateway: the tunnels by name,
// the visitor cap for accepted connections, and the WebSocket agents that
// arrive on the HTTPS port. *gateway.Server implements it.
//
// Every method is called concurrently, from the goroutines of many
// visitor requests, and must not block on the network: Tunnel is called
// once per request and should take no lock held across I/O. The ingress
// passes no contexts to these methods; the Member streams it opens take
// the request's context (see gateway.Member).
type Gateway interface {
	// Domain is the domain of the tunnels' host names, in lower case
	// without a trailing dot; "" when the gateway has none.
	Domain() string
	// Route maps a request's Host (or a TLS server name) to the tunnel
	// that answers on it and the host its backend is told; an empty name
	// when none does (see gateway.Server.Route).
	Route(host string) (name, forwarded string, err error)
	// Tunnel returns the tunnel published as name; false when none is.
	Tunnel(name string) (gateway.HTTPTunnel, bool)
	// LimitVisitors wraps a visitor listener in the gateway-wide cap on
	// visitor connections.
	LimitVisitors(ln net.Listener) net.Listener
	// AgentTLS returns a copy of the HTTPS port's configuration that also
	// answers agents connecting over WebSocket (their ALPN).
	AgentTLS(tc *tls.Config) *tls.Config
	// ServeAgentTLS takes a connection that negotiated the WebSocket
	// agent ALPN on the HTTPS port, and returns at once.
	ServeAgentTLS(c *tls.Conn)
}

var _ Gateway = (*gateway.Server)(nil)

// Defaults for Config.
const (
	DefaultResponseTimeout      = 60 * time.Second
	DefaultReadHeaderTimeout    = 10 * time.Second
	DefaultIdleTimeout          = 120 * time.Second
	DefaultMaxHeaderBytes       = 64 << 10
	DefaultBodyReadTimeout      = 60 * time.Second
	DefaultMaxRequestsPerSource = 512
)

// idleStreamsPerMember bounds the idle streams a session keeps for one
// tunnel.
const idleStreamsPerMember = 128

// Config configures the ingress. Zero fields take the defaults given.
type Config struct {
	// TrustedProxies are the peers whose X-Forwarded-* and Forwarded
	// headers are kept (and whose X-Forwarded-For names the visitor);
	// those headers from anyone else are dropped.
	TrustedProxies []netip.Prefix
	// ResponseTimeout bounds how long a backend may take to start its
	// response once it has the whole request; visitors then get 504.
	// Default 60s.
	ResponseTimeout time.Duration
	// StatusTimeout bounds the wait for an agent to say whether it
	// reached the backend. Default gateway.DefaultStatusTimeout.
	StatusTimeout time.Duration
	// ReadHeaderTimeout bounds a visitor's TLS handshake and request
	// headers. Default 10s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a visitor's keep-alive connection after this long
	// without a request. Default 120s.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a visitor's request headers. Default 64 KiB.
	MaxHeaderBytes int
	// BodyReadTimeout bounds the wait for each read of a visitor's request
	// body: a body that delivers nothing for this long ends the request
	// (408 if no response has started, else the connection is closed),
	// while a slow upload that keeps moving is not limited. Default 60s.
	BodyReadTimeout time.Duration
	// MaxRequestsPerSource caps the HTTP requests in flight from one
	// source address (the visitor's IP as the gateway can vouch for it;
	// IPv6 per /64); more are answered 429 at once. Default 512.
	MaxRequestsPerSource int
	// Logger receives the ingress's logs. Default slog.Default().
	Logger *slog.Logger
	// AccessLog receives one Info line per visitor request, when it ends
	// ("http request": tunnel, method, host, path without the query,
	// status, bytes of response body, duration, visitor, session: the
	// agent session that took it, 0 for none). Default nil: none.
	AccessLog *slog.Logger
	// Observer is told of each request that reached a tunnel, for
	// metrics. Default none.
	Observer Observer
}

func (c Config) withDefaults() Config {
	if c.ResponseTimeout <= 0 {
		c.ResponseTimeout = DefaultResponseTimeout
	}
	if c.StatusTimeout <= 0 {
		c.StatusTimeout = gateway.DefaultStatusTimeout
	}
	if c.ReadHeaderTimeout <= 0 {
		c.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if c.BodyReadTimeout <= 0 {
		c.BodyReadTimeout = DefaultBodyReadTimeout
	}
	if c.MaxRequestsPerSource <= 0 {
		c.MaxRequestsPerSource = DefaultMaxRequestsPerSource
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
	return c
}

// ErrServerClosed is returned by Serve and ServeHTTPS after Close or
// Shutdown.
var ErrServerClosed = errors.New("ingress: server closed")

// Server is an HTTP(S) ingress of one gateway. It is an http.Handler
// too (ServeHTTP), for a program that serves it on its own http.Server.
type Server struct {
	gw      Gateway
	cfg     Config
	log     *slog.Logger
	proxy   *httputil.ReverseProxy
	sources *sourceLimiter  // requests in flight per source
	ctx     context.Context // ends when the ingress closes
	cancel  context.CancelFunc
	next    atomic.Uint64 // round-robin cursor of member choice
	members sync.Map      // member id -> *member; see member.go

	// testHookRawWait, when a test sets it, runs before the callback arms
	// a wait for the next request (rawwait.go).
	testHookRawWait func(*fastConn)
	// testHookLeave, when a test sets it, runs when the tap has set the
	// deadline that interrupts the goroutine, before the state says so
	// (detach.go).
	testHookLeave func(*fastConn)

	mu      sync.Mutex
	servers map[*http.Server]struct{}
	fast    map[*fastServer]struct{} // the forwarding paths in front of servers; see fast.go
	closed  bool
	once    sync.Once
}

// New returns the ingress of gw. It serves nothing until Serve or
// ServeHTTPS.
func New(gw Gateway, cfg Config) *Server {
	cfg = cfg.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	in := &Server{gw: gw, cfg: cfg, log: cfg.Logger, ctx: ctx, cancel: cancel,
		servers: make(map[*http.Server]struct{}), fast: make(map[*fastServer]struct{}),
		sources: newSourceLimiter(cfg.MaxRequestsPerSource, cfg.Logger, source.Interval)}
	in.proxy = &httputil.ReverseProxy{
		Rewrite:      in.rewrite,
		Transport:    roundTripperFunc(in.roundTrip),
		ErrorHandler: in.proxyError,
		BufferPool:   bufferPool{},
		ErrorLog:     slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
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
	t      gateway.HTTPTunnel
	pol    gateway.VisitorRules
	https  bool
	peer   netip.Addr
	body   *visitorBody // nil without a body
	remote string       // visitor address
	host   string       // the validated Host, as the backend is told it
	x      *exchange    // what the access log and metrics record

	// The slots routeRequest took, given back by releaseRoute.
	admitted func()       // the tunnel's visitor cap
	src      netip.Prefix // the request's source
}

type routeKey struct{}

// newHTTPServer returns the server for one ingress listener.
func (in *Server) newHTTPServer(h http.Handler) *http.Server {
	c := in.cfg
	hs := &http.Server{
		Handler:           in.guard(h),
		ReadHeaderTimeout: c.ReadHeaderTimeout,
		IdleTimeout:       c.IdleTimeout,
		MaxHeaderBytes:    c.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(in.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return in.ctx },
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			info := &connInfo{}
			switch x := c.(type) {
			case *tls.Conn:
				info.https = true
			case *httpguard.Conn:
				info.guard = x
				_, info.https = x.Conn.(*tls.Conn)
			case *handoffConn:
				info.guard = x.Conn
				info.https = x.https
			}
			return context.WithValue(ctx, connInfoKey{}, info)
		},
	}
	return hs
}

// guard refuses the requests whose framing the connection's scanner found
// to be a smuggling shape. It must be the outermost handler: the scanner's
// verdicts are counted in the order requests reach it.
func (in *Server) guard(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if info, _ := r.Context().Value(connInfoKey{}).(*connInfo); info != nil && info.guard != nil {
			if err := info.guard.Next(); err != nil {
				in.log.Debug("visitor request refused", "visitor", r.RemoteAddr, "err", err)
				w.Header().Set("Connection", "close")
				httpError(w, http.StatusBadRequest, "malformed request")
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

func (in *Server) track(hs *http.Server, fs *fastServer) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.closed {
		return false
	}
	in.servers[hs] = struct{}{}
	if fs != nil {
		in.fast[fs] = struct{}{}
	}
	return true
}

func (in *Server) untrack(hs *http.Server, fs *fastServer) {
	in.mu.Lock()
	delete(in.servers, hs)
	delete(in.fast, fs)
	in.mu.Unlock()
}

// shutdown stops the ingress servers, waiting for requests in flight until
// ctx ends; with a nil ctx it closes them at once. It returns ctx's error
// if ctx ended with requests still in flight.
func (in *Server) shutdown(ctx context.Context) error {
	in.mu.Lock()
	in.closed = true
	servers := make([]*http.Server, 0, len(in.servers))
	for hs := range in.servers {
		servers = append(servers, hs)
	}
	fast := make([]*fastServer, 0, len(in.fast))
	for fs := range in.fast {
		fast = append(fast, fs)
	}
	in.mu.Unlock()
	var wg sync.WaitGroup
	var late atomic.Bool
	for _, fs := range fast {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if fs.shutdown(ctx) != nil {
				late.Store(true)
			}
		}()
	}
	for _, hs := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ctx == nil || hs.Shutdown(ctx) != nil {
				late.Store(ctx != nil)
				hs.Close()
			}
		}()
	}
	wg.Wait()
	if late.Load() {
		return ctx.Err()
	}
	return nil
}

// Shutdown stops accepting visitors, waits for the requests in flight to
// end or for ctx, then closes everything as Close does. It returns ctx's
// error if ctx ended first.
func (in *Server) Shutdown(ctx context.Context) error {
	err := in.shutdown(ctx)
	in.Close()
	return err
}

// Close stops the ingress at once: its listeners, the visitor connections
// and the idle streams it keeps to agents. Serve and ServeHTTPS then
// return ErrServerClosed.
func (in *Server) Close() error {
	in.cancel()
	in.shutdown(nil)
	in.once.Do(func() {
		in.sources.summary.Close()
		in.members.Range(func(_, v any) bool {
			v.(*member).drop()
			return true
		})
	})
	return nil
}

// Serve serves the tunnels over plain HTTP on ln, by host name, until the
// ingress closes. wrap, if not nil, wraps the ingress handler (an ACME
// HTTP-01 challenge responder, say). It always closes ln.
func (in *Server) Serve(ln net.Listener, wrap func(http.Handler) http.Handler) error {
	if in.gw.Domain() == "" {
		ln.Close()
		return errors.New("ingress: HTTP needs the gateway's domain")
	}
	var h http.Handler = in
	if wrap != nil {
		// The wrapper may answer some requests itself: they all go to
		// the standard server.
		h = wrap(h)
		hs := in.newHTTPServer(h)
		if !in.track(hs, nil) {
			ln.Close()
			return ErrServerClosed
		}
		defer in.untrack(hs, nil)
		err := hs.Serve(httpguard.NewListener(in.gw.LimitVisitors(ln)))
		if errors.Is(err, http.ErrServerClosed) {
			return ErrServerClosed
		}
		return fmt.Errorf("ingress: HTTP: %w", err)
	}
	hs := in.newHTTPServer(h)
	vl := in.gw.LimitVisitors(ln)
	fs := in.newFastServer(false, ln.Addr(), vl)
	if !in.track(hs, fs) {
		ln.Close()
		return ErrServerClosed
	}
	defer in.untrack(hs, fs)
	handed := make(chan error, 1)
	go func() { handed <- hs.Serve(fs.handoff) }()
	var err error
	for {
		var c net.Conn
		if c, err = accept.Next(vl, fs.handoff.done, in.log, "accept visitor"); err != nil {
			break
		}
		fs.serve(httpguard.Wrap(c))
	}
	vl.Close()
	fs.handoff.Close()
	<-handed
	if fs.closing.Load() {
		return ErrServerClosed
	}
	fs.shutdown(nil)
	return fmt.Errorf("ingress: HTTP: %w", err)
}

// ServeHTTPS serves the tunnels over HTTPS on ln, with the certificates of
// tc, until the ingress closes. Visitors get HTTP/2 when they offer it;
// agents connecting over WebSocket go to the gateway. It always closes
// ln.
func (in *Server) ServeHTTPS(ln net.Listener, tc *tls.Config) error {
	if in.gw.Domain() == "" {
		ln.Close()
		return errors.New("ingress: HTTPS needs the gateway's domain")
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
	tc = in.gw.AgentTLS(tc)
	hs := in.newHTTPServer(in)
	hs.TLSConfig = tc
	fs := in.newFastServer(true, ln.Addr(), nil)
	if !in.track(hs, fs) {
		ln.Close()
		return ErrServerClosed
	}
	defer in.untrack(hs, fs)
	// HTTP/1 connections go to the forwarding path, which hands what it
	// does not forward to hs; HTTP/2 ones to hs directly.
	handed := make(chan error, 1)
	go func() { handed <- hs.Serve(fs.handoff) }()
	hl := newHandshakeListener(in.ctx, in.gw.LimitVisitors(ln), tc, in.cfg.ReadHeaderTimeout, in.log, in.gw.ServeAgentTLS, fs.serve)
	err := hs.Serve(hl)
	hl.wait()
	fs.handoff.Close()
	<-handed
	if !fs.closing.Load() {
		fs.shutdown(nil)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return ErrServerClosed
	}
	return fmt.Errorf("ingress: HTTPS: %w", err)
}

// Port is the port of a TCP listener, 0 for another kind: what
// gateway.Server.SetIngressPorts wants to be told.
func Port(ln net.Listener) int {
	if a, ok := ln.Addr().(*net.TCPAddr); ok {
		return a.Port
	}
	return 0
}
