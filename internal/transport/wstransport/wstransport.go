// Package wstransport is the WebSocket transport, for agents behind
// networks that allow only HTTPS, possibly through an HTTP forward proxy
// with CONNECT: the tlsmux stream multiplexer runs over one binary
// WebSocket (github.com/coder/websocket) over TLS 1.3. Dial is the agent's
// side, Handler the gateway's.
//
// Keepalives and dead-peer detection come from the multiplexer (see
// transport.Config), so no WebSocket pings are sent; the multiplexer's
// per-stream windows keep a stalled stream from stalling the others. The
// WebSocket is never compressed: it carries multiplexer frames that
// compression would only spend CPU on.
package wstransport

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/tlsmux"
)

// Path is the fixed path the gateway serves the WebSocket on (on its agent
// port and on its HTTPS port).
const Path = "/_diglett/connect"

// ALPN is the TLS application protocol of WebSocket agent connections; the
// gateway picks its agent certificate and this handler by it.
const ALPN = "diglett-ws"

// ErrNotServed is returned (wrapped, with the HTTP status) by Dial when the
// server at the address answers the path with 404: it is not a gateway, or
// one that does not serve WebSocket agents.
var ErrNotServed = errors.New("gateway does not serve WebSocket agents at " + Path)

// ProxyError is returned by Dial when the HTTP proxy answers CONNECT with
// anything but 200: it wants credentials (407), or its policy refuses the
// destination (403 and others).
type ProxyError struct {
	Proxy      string // the proxy's URL, any password redacted
	Target     string // the host:port CONNECT asked for
	StatusCode int    // the proxy's status code
	Status     string // the proxy's status line, e.g. "407 Proxy Authentication Required"
}

func (e *ProxyError) Error() string {
	return fmt.Sprintf("proxy %s refused CONNECT to %s: %s", e.Proxy, e.Target, e.Status)
}

// HandlerConfig configures Handler.
type HandlerConfig struct {
	// Config tunes every session.
	Config transport.Config
	// Accept takes each new session, which it then owns (it must close
	// it). It is called on the request's goroutine: it may serve the
	// session to its end or hand it on and return. The session does not
	// depend on the request, its context or the http.Server: it ends only
	// when closed or when the peer goes away. Required.
	Accept func(*tlsmux.Session)
}

// Handler upgrades GET requests for Path to WebSocket sessions and hands
// each to cfg.Accept. The session's TLS state is the request's (r.TLS). The
// handler answers 404 for other paths, 403 for a request not over TLS 1.3,
// 426 for a request that is not a WebSocket upgrade (400 or 405 for a
// malformed one) and 403 for a cross-origin request from a browser. Once
// upgraded, the connection is the session's: the handler starts no
// goroutine of its own, and http.Server's Shutdown and Close do not end
// sessions. Handler panics if cfg.Accept is nil.
//
// An http.Server serves Handler on connections that negotiated ALPN only
// if they are handed to it wrapped by ServerConn.
func Handler(cfg HandlerConfig) http.Handler {
	if cfg.Accept == nil {
		panic("wstransport: HandlerConfig.Accept is nil")
	}
	return &handler{cfg: cfg}
}

type handler struct{ cfg HandlerConfig }

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != Path {
		http.NotFound(w, r)
		return
	}
	if r.TLS == nil {
		http.Error(w, "WebSocket agents must connect over TLS", http.StatusForbidden)
		return
	}
	if r.TLS.Version < tls.VersionTLS13 {
		http.Error(w, "WebSocket agents must connect over TLS 1.3", http.StatusForbidden)
		return
	}
	state := *r.TLS
	// Accept answers non-upgrade requests itself (426, 400, 405, 403).
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		return
	}
	sess, err := tlsmux.New(newConn(ws, nil, nil), state, false, h.cfg.Config)
	if err != nil {
		return // the connection is closed; the client sees it end
	}
	h.cfg.Accept(sess)
}

// ServerConn wraps a server-side TLS connection whose handshake is
// complete, for an http.Server serving Handler. http.Server closes a
// *tls.Conn that negotiated an application protocol (ALPN) it has no
// TLSNextProto entry for, as WebSocket agents' connections do (ALPN); on
// the returned connection it speaks HTTP/1.1 and sets r.TLS from its
// ConnectionState method. A gateway that picks agents' connections by
// ALPN after its own handshake hands them on wrapped.
func ServerConn(c *tls.Conn) net.Conn { return serverConn{c} }

// serverConn hides a *tls.Conn's type from http.Server, not its methods.
type serverConn struct{ *tls.Conn }

// Dial connects to the gateway at addr (host:port) over
// wss://addr/_diglett/connect and starts a session over it, bounded by
// ctx (which does not bound the session). The TLS connection uses a clone
// of tlsConf, with its verification settings, NextProtos set to [ALPN] and
// at least TLS 1.3. proxy chooses the proxy for the handshake request, as
// http.Transport.Proxy does (http.ProxyFromEnvironment, say): nil or a nil
// URL connects directly; an http:// proxy is asked to CONNECT, with Basic
// credentials from the URL's user info sent as Proxy-Authorization. Other
// proxy schemes are refused. Redirects are not followed.
//
// A proxy that refuses CONNECT gives a *ProxyError; a server that answers
// 404 gives ErrNotServed. The session's RemoteAddr is that of the TCP peer:
// the proxy's when there is one.
func Dial(ctx context.Context, addr string, tlsConf *tls.Config, proxy func(*http.Request) (*url.URL, error), cfg transport.Config) (*tlsmux.Session, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("gateway address: %w", err)
	}
	target := "wss://" + addr + Path

	var tc *tls.Config
	if tlsConf != nil {
		tc = tlsConf.Clone()
	} else {
		tc = &tls.Config{}
	}
	tc.NextProtos = []string{ALPN}
	tc.MinVersion = max(tc.MinVersion, tls.VersionTLS13)
	if tc.ServerName == "" {
		tc.ServerName = host
	}

	var proxyURL *url.URL
	if proxy != nil {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+Path, nil)
		if err != nil {
			return nil, fmt.Errorf("gateway address: %w", err)
		}
		if proxyURL, err = proxy(req); err != nil {
			return nil, fmt.Errorf("choose proxy: %w", err)
		}
	}

	// net/http drops the TLS application protocols of upgrade requests,
	// and the gateway needs ALPN: the connection, through the proxy if
	// any, and its TLS are made here; net/http does the HTTP exchange.
	var (
		mu  sync.Mutex
		raw net.Conn // the TCP connection, for the session's addresses
	)
	tr := &http.Transport{
		// Called once, for addr.
		DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			c, err := dialRaw(ctx, addr, proxyURL)
			if err != nil {
				return nil, err
			}
			tlsConn := tls.Client(c, tc)
			if err := tlsConn.HandshakeContext(ctx); err != nil {
				c.Close()
				// The alert's type is not exported.
				if strings.Contains(err.Error(), "no application protocol") {
					return nil, fmt.Errorf("tls handshake: %w (the server does not speak %s: not a gateway serving WebSocket agents)", err, ALPN)
				}
				return nil, fmt.Errorf("tls handshake: %w", err)
			}
			mu.Lock()
			raw = c
			mu.Unlock()
			return tlsConn, nil
		},
		DisableKeepAlives:      true, // one request; the connection is the WebSocket's
		MaxResponseHeaderBytes: maxHeaderBytes,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	ws, resp, err := websocket.Dial(ctx, target, &websocket.DialOptions{
		HTTPClient:      client,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		return nil, dialError(target, resp, err)
	}
	if resp.TLS == nil { // cannot happen: the connection is TLS
		ws.CloseNow()
		return nil, fmt.Errorf("dial %s: no TLS state", target)
	}
	var local, remote net.Addr
	mu.Lock()
	if raw != nil {
		local, remote = raw.LocalAddr(), raw.RemoteAddr()
	}
	mu.Unlock()
	return tlsmux.New(newConn(ws, local, remote), *resp.TLS, true, cfg)
}

// maxHeaderBytes bounds the response headers of the proxy and the gateway.
const maxHeaderBytes = 64 << 10

// dialRaw connects to addr, directly or through an HTTP proxy.
func dialRaw(ctx context.Context, addr string, proxyURL *url.URL) (net.Conn, error) {
	var d net.Dialer
	if proxyURL == nil {
		return d.DialContext(ctx, "tcp", addr)
	}
	name := proxyURL.Redacted()
	if proxyURL.Scheme != "http" {
		return nil, fmt.Errorf("proxy %s: unsupported scheme %q: only http:// proxies are supported", name, proxyURL.Scheme)
	}
	paddr := proxyURL.Host
	if proxyURL.Port() == "" {
		paddr = net.JoinHostPort(proxyURL.Hostname(), "80")
	}
	conn, err := d.DialContext(ctx, "tcp", paddr)
	if err != nil {
		return nil, fmt.Errorf("proxy %s: %w", name, err)
	}
	if err := connect(ctx, conn, proxyURL, addr); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// connect asks the proxy on conn to CONNECT to addr, bounded by ctx.
func connect(ctx context.Context, conn net.Conn, proxyURL *url.URL, addr string) error {
	name := proxyURL.Redacted()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	err := func() error {
		req := &http.Request{
			Method: http.MethodConnect,
			URL:    &url.URL{Opaque: addr},
			Host:   addr,
			Header: make(http.Header),
		}
		if u := proxyURL.User; u != nil {
			pass, _ := u.Password()
			req.Header.Set("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+pass)))
		}
		if err := req.Write(conn); err != nil {
			return fmt.Errorf("proxy %s: send CONNECT: %w", name, err)
		}
		br := bufio.NewReader(io.LimitReader(conn, maxHeaderBytes))
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			return fmt.Errorf("proxy %s: read CONNECT response: %w", name, err)
		}
		if resp.StatusCode != http.StatusOK {
			return &ProxyError{Proxy: name, Target: addr, StatusCode: resp.StatusCode, Status: resp.Status}
		}
		if br.Buffered() > 0 { // the TLS client speaks first
			return fmt.Errorf("proxy %s: data after the CONNECT response", name)
		}
		return nil
	}()
	if !stop() {
		return fmt.Errorf("proxy %s: CONNECT: %w", name, context.Cause(ctx))
	}
	if err != nil {
		return err
	}
	return conn.SetDeadline(time.Time{})
}

// dialError turns a failed handshake into an error that says what to fix.
func dialError(target string, resp *http.Response, err error) error {
	var pe *ProxyError
	if errors.As(err, &pe) {
		return pe
	}
	if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
		if resp.StatusCode == http.StatusNotFound {
			return fmt.Errorf("%w: %s", ErrNotServed, resp.Status)
		}
		msg := fmt.Sprintf("gateway refused the WebSocket upgrade at %s: %s", target, resp.Status)
		if resp.Body != nil {
			// The first line of the body, if it is plain text (the gateway
			// says there why it refused).
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
			line, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
			if line != "" && utf8.ValidString(line) && !strings.ContainsFunc(line, unicode.IsControl) {
				msg += ": " + line
			}
		}
		return errors.New(msg)
	}
	// Strip the library's and net/http's framing ("failed to WebSocket
	// dial: failed to send handshake request: Get ..."): the cause is what
	// the user needs.
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	// net/http reports a server that closed the connection without an
	// answer as EOF, or, when it closed before the request was sent, with
	// an error of its own that it does not export.
	if err == io.EOF || strings.Contains(err.Error(), "server closed idle connection") {
		return fmt.Errorf("dial %s: the server closed the connection without answering the WebSocket upgrade: %w", target, err)
	}
	return fmt.Errorf("dial %s: %w", target, err)
}

// conn is the WebSocket as a net.Conn carrying binary messages.
type conn struct {
	net.Conn
	ws            *websocket.Conn
	local, remote net.Addr
}

// newConn wraps ws; local and remote override the addresses when set.
func newConn(ws *websocket.Conn, local, remote net.Addr) *conn {
	// A message is one multiplexer frame, of any size: no read limit
	// (NetConn lifts it too, but the transport depends on it).
	ws.SetReadLimit(-1)
	return &conn{
		// The session, not a context, bounds the connection's life.
		Conn:   websocket.NetConn(context.Background(), ws, websocket.MessageBinary),
		ws:     ws,
		local:  local,
		remote: remote,
	}
}

// Close closes the connection without the WebSocket closing handshake:
// the multiplexer has already told the peer why, and the handshake would
// hold Close for seconds when the peer is gone.
func (c *conn) Close() error {
	err := c.ws.CloseNow()
	c.Conn.Close() // stops NetConn's deadline timers; the socket is closed already
	return err
}

func (c *conn) LocalAddr() net.Addr {
	if c.local != nil {
		return c.local
	}
	return c.Conn.LocalAddr()
}

func (c *conn) RemoteAddr() net.Addr {
	if c.remote != nil {
		return c.remote
	}
	return c.Conn.RemoteAddr()
}
