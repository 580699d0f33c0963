package wstransport_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/tlsmux"
	"github.com/diglett/diglett/internal/transport/transporttest"
	"github.com/diglett/diglett/internal/transport/wstransport"
	"github.com/diglett/diglett/internal/transport/wstransport/proxytest"
)

func serverTLS(t *testing.T) *tls.Config {
	tc := testutil.ServerTLS(t)
	tc.NextProtos = []string{wstransport.ALPN}
	return tc
}

func clientTLS() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
}

// checkLeaks fails t if goroutines started during t outlive it and its
// cleanups. Call it first, so that its cleanup runs last.
func checkLeaks(t *testing.T) {
	baseline := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		if err := goleak.Find(baseline); err != nil {
			t.Errorf("goroutines leaked: %v", err)
		}
	})
}

// gateway is a gateway-like server: TLS on a loopback port, Handler behind
// it, and every accepted session on a channel.
type gateway struct {
	addr     string
	port     int
	sessions chan *tlsmux.Session
}

func startGateway(t *testing.T, cfg transport.Config) *gateway {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gateway{
		addr:     ln.Addr().String(),
		port:     ln.Addr().(*net.TCPAddr).Port,
		sessions: make(chan *tlsmux.Session, 100),
	}
	var (
		mu       sync.Mutex
		accepted []*tlsmux.Session
	)
	srv := &http.Server{
		Handler: wstransport.Handler(wstransport.HandlerConfig{
			Config: cfg,
			Accept: func(s *tlsmux.Session) {
				mu.Lock()
				accepted = append(accepted, s)
				mu.Unlock()
				select {
				case g.sessions <- s:
				default:
					s.Close()
				}
			},
		}),
		ErrorLog: log.New(io.Discard, "", 0),
	}
	conf := serverTLS(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(handshakeListener{ln, conf})
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, s := range accepted {
			s.Close()
		}
	})
	return g
}

// accepted returns the next session the gateway accepted.
func (g *gateway) accepted(t *testing.T) *tlsmux.Session {
	t.Helper()
	select {
	case s := <-g.sessions:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("gateway accepted no session")
		return nil
	}
}

func dial(t *testing.T, addr string, proxy func(*http.Request) (*url.URL, error), cfg transport.Config) (*tlsmux.Session, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel() // the session outlives the dial's context
	s, err := wstransport.Dial(ctx, addr, clientTLS(), proxy, cfg)
	if err == nil {
		t.Cleanup(func() { s.Close() })
	}
	return s, err
}

func TestConformance(t *testing.T) {
	checkLeaks(t)
	const maxIncoming = 64
	cfg := transport.Config{MaxIncomingStreams: maxIncoming}
	g := startGateway(t, cfg)
	transporttest.Run(t, func(t *testing.T) (transport.Session, transport.Session) {
		c, err := dial(t, g.addr, nil, cfg)
		if err != nil {
			t.Fatal(err)
		}
		s := g.accepted(t)
		t.Cleanup(func() { s.Close() })
		return c, s
	}, transporttest.Options{MaxIncoming: maxIncoming})
}

func TestSessionState(t *testing.T) {
	checkLeaks(t)
	g := startGateway(t, transport.Config{})
	c, err := dial(t, g.addr, nil, transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	s := g.accepted(t)
	for name, st := range map[string]tls.ConnectionState{"client": c.ConnectionState(), "server": s.ConnectionState()} {
		if st.Version != tls.VersionTLS13 || st.NegotiatedProtocol != wstransport.ALPN || !st.HandshakeComplete {
			t.Errorf("%s state: version %#x, protocol %q, complete %v", name, st.Version, st.NegotiatedProtocol, st.HandshakeComplete)
		}
	}
	if got := c.ConnectionState().PeerCertificates; len(got) == 0 || !got[0].Equal(testutil.Cert(t).Leaf) {
		t.Error("client state does not carry the gateway's certificate")
	}
	if got := c.RemoteAddr().String(); got != g.addr {
		t.Errorf("client RemoteAddr %s, want %s", got, g.addr)
	}
	if c.LocalAddr().String() != s.RemoteAddr().String() {
		t.Errorf("client LocalAddr %s, server RemoteAddr %s", c.LocalAddr(), s.RemoteAddr())
	}
	echoOnce(t, c, s)
}

// echoOnce checks that a stream opened by c is served by s.
func echoOnce(t *testing.T, c, s transport.Session) {
	t.Helper()
	go func() {
		st, err := s.AcceptStream(context.Background())
		if err != nil {
			return
		}
		defer st.Close()
		io.Copy(st, st)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := st.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 5)
	if _, err := io.ReadFull(st, b); err != nil || string(b) != "hello" {
		t.Fatalf("echo: %q, %v", b, err)
	}
}

// handshakeListener does the TLS handshake itself, as the gateway does
// to pick connections by ALPN, and hands them on wrapped by ServerConn.
// (Serially: fine for tests.)
type handshakeListener struct {
	net.Listener
	conf *tls.Config
}

func (l handshakeListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		tc := tls.Server(c, l.conf)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			c.Close()
			continue
		}
		return wstransport.ServerConn(tc), nil
	}
}

func TestHandlerRefusals(t *testing.T) {
	checkLeaks(t)
	g := startGateway(t, transport.Config{})
	tr := &http.Transport{TLSClientConfig: clientTLS()}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}

	// Plain HTTP, no State func: refused.
	plainLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	plain := &http.Server{Handler: wstransport.Handler(wstransport.HandlerConfig{Accept: func(s *tlsmux.Session) { s.Close() }})}
	done := make(chan struct{})
	go func() { defer close(done); plain.Serve(plainLn) }()
	defer func() { plain.Close(); <-done }()

	upgrade := http.Header{
		"Connection":            {"Upgrade"},
		"Upgrade":               {"websocket"},
		"Sec-Websocket-Version": {"13"},
		"Sec-Websocket-Key":     {"dGhlIHNhbXBsZSBub25jZQ=="},
	}
	for _, tc := range []struct {
		name   string
		url    string
		header http.Header
		want   int
	}{
		{"wrong path", "https://" + g.addr + "/other", upgrade, http.StatusNotFound},
		{"not an upgrade", "https://" + g.addr + wstransport.Path, nil, http.StatusUpgradeRequired},
		{"not TLS", "http://" + plainLn.Addr().String() + wstransport.Path, upgrade, http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest("GET", tc.url, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.header != nil {
				req.Header = tc.header.Clone()
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %s, want %d", resp.Status, tc.want)
			}
		})
	}
}

// serveHTTPS serves h over TLS offering nextProtos, on a loopback port,
// the plain way: tls.NewListener and http.Server.
func serveHTTPS(t *testing.T, h http.Handler, nextProtos []string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conf := serverTLS(t)
	conf.NextProtos = nextProtos
	srv := &http.Server{Handler: h, ErrorLog: log.New(io.Discard, "", 0)}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(tls.NewListener(ln, conf)) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return ln.Addr().String()
}

// TestNotServed dials an HTTPS server that does not serve the path.
func TestNotServed(t *testing.T) {
	checkLeaks(t)
	addr := serveHTTPS(t, http.NotFoundHandler(), nil)
	_, err := dial(t, addr, nil, transport.Config{})
	if !errors.Is(err, wstransport.ErrNotServed) {
		t.Fatalf("err = %v, want ErrNotServed", err)
	}
	const want = "gateway does not serve WebSocket agents at /_diglett/connect: 404 Not Found"
	if err.Error() != want {
		t.Fatalf("err = %q, want %q", err, want)
	}
}

func TestDialErrors(t *testing.T) {
	checkLeaks(t)
	closed := testutil.RefusedAddr(t)
	g := startGateway(t, transport.Config{})
	accept := wstransport.Handler(wstransport.HandlerConfig{Accept: func(s *tlsmux.Session) { s.Close() }})

	for _, tc := range []struct {
		name string
		addr string
		conf *tls.Config
		want string
	}{
		{"closed port", closed, clientTLS(), "connection refused"},
		{"untrusted certificate", g.addr, &tls.Config{ServerName: "localhost"}, "tls handshake: tls: failed to verify certificate"},
		// A server that offers other application protocols only.
		{"no ALPN", serveHTTPS(t, accept, []string{"h2", "http/1.1"}), clientTLS(), "does not speak diglett-ws"},
		// http.Server drops connections that negotiated the agent ALPN
		// unless they come wrapped by ServerConn.
		{"ALPN without ServerConn", serveHTTPS(t, accept, []string{wstransport.ALPN}), clientTLS(), "closed the connection without answering the WebSocket upgrade"},
		{"no port", "127.0.0.1", clientTLS(), "missing port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s, err := wstransport.Dial(ctx, tc.addr, tc.conf, nil, transport.Config{})
			if err == nil {
				s.Close()
				t.Fatal("dial succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "failed to WebSocket dial") {
				t.Fatalf("err = %q, want it to say %q", err, tc.want)
			}
			t.Log(err)
		})
	}
}

func TestProxy(t *testing.T) {
	checkLeaks(t)
	g := startGateway(t, transport.Config{})

	t.Run("Through", func(t *testing.T) {
		p := proxytest.Start(t, proxytest.Options{ConnectPorts: []int{g.port}})
		c, err := dial(t, g.addr, http.ProxyURL(p.URL), transport.Config{})
		if err != nil {
			t.Fatal(err)
		}
		echoOnce(t, c, g.accepted(t))
		if got := p.Connects(); !slices.Equal(got, []string{g.addr}) {
			t.Errorf("proxy saw CONNECTs %q, want [%s]", got, g.addr)
		}
		if p.Established() != 1 {
			t.Errorf("proxy opened %d connections, want 1; log:\n%s", p.Established(), p.Log())
		}
		if got := c.RemoteAddr().String(); got != p.URL.Host {
			t.Errorf("RemoteAddr %s, want the proxy's %s", got, p.URL.Host)
		}
	})

	t.Run("BasicAuth", func(t *testing.T) {
		p := proxytest.Start(t, proxytest.Options{ConnectPorts: []int{g.port}, User: "user", Password: "pass"})

		_, err := dial(t, g.addr, http.ProxyURL(p.URL), transport.Config{})
		var pe *wstransport.ProxyError
		if !errors.As(err, &pe) || pe.StatusCode != http.StatusProxyAuthRequired {
			t.Fatalf("without credentials: err = %v, want a 407 ProxyError", err)
		}
		want := "proxy " + p.URL.String() + " refused CONNECT to " + g.addr + ": 407 Proxy Authentication Required"
		if err.Error() != want {
			t.Errorf("without credentials: err = %q, want %q", err, want)
		}

		wrong := *p.URL
		wrong.User = url.UserPassword("user", "wrong")
		_, err = dial(t, g.addr, http.ProxyURL(&wrong), transport.Config{})
		// tinyproxy answers a wrong password with 401, others with 407.
		if !errors.As(err, &pe) || (pe.StatusCode != 401 && pe.StatusCode != 407) || strings.Contains(err.Error(), "wrong") {
			t.Fatalf("wrong password: err = %v, want a refusal that does not show the password", err)
		}
		t.Log(err)

		c, err := dial(t, g.addr, http.ProxyURL(p.AuthURL()), transport.Config{})
		if err != nil {
			t.Fatalf("with credentials: %v", err)
		}
		echoOnce(t, c, g.accepted(t))
		if n := len(p.Connects()); n != 3 || p.Established() != 1 {
			t.Errorf("proxy saw %d CONNECTs and opened %d connections, want 3 and 1; log:\n%s", n, p.Established(), p.Log())
		}
	})

	t.Run("DeniedPort", func(t *testing.T) {
		other := g.port + 1
		if other > 65535 {
			other = g.port - 1
		}
		p := proxytest.Start(t, proxytest.Options{ConnectPorts: []int{other}})
		_, err := dial(t, g.addr, http.ProxyURL(p.URL), transport.Config{})
		var pe *wstransport.ProxyError
		if !errors.As(err, &pe) || pe.StatusCode != http.StatusForbidden {
			t.Fatalf("err = %v, want a 403 ProxyError", err)
		}
		if !strings.HasPrefix(err.Error(), "proxy "+p.URL.String()+" refused CONNECT to "+g.addr+": 403") {
			t.Errorf("err = %q", err)
		}
		t.Log(err)
		if !strings.Contains(p.Log(), "Refused CONNECT method on port "+strconv.Itoa(g.port)) || p.Established() != 0 {
			t.Errorf("proxy log does not show the refusal:\n%s", p.Log())
		}
	})
}

// relay forwards one TCP connection to addr until cut, then silently
// drops everything in both directions, like a peer that vanished without
// FIN or RST.
type relay struct {
	addr string
	mu   sync.Mutex
	cut  bool
}

func startRelay(t *testing.T, target string) *relay {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	var conns []net.Conn
	var connsMu sync.Mutex
	wg.Add(1)
	go func() {
		defer wg.Done()
		a, err := ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", target)
		if err != nil {
			a.Close()
			return
		}
		connsMu.Lock()
		conns = append(conns, a, b)
		connsMu.Unlock()
		wg.Add(2)
		go func() { defer wg.Done(); r.copy(a, b) }()
		go func() { defer wg.Done(); r.copy(b, a) }()
	}()
	t.Cleanup(func() {
		ln.Close()
		connsMu.Lock()
		for _, c := range conns {
			c.Close()
		}
		connsMu.Unlock()
		wg.Wait()
	})
	return r
}

func (r *relay) copy(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		r.mu.Lock()
		cut := r.cut
		r.mu.Unlock()
		if !cut && n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func TestDeadPeerDetected(t *testing.T) {
	checkLeaks(t)
	idle := 900 * time.Millisecond
	cfg := transport.Config{MaxIdleTimeout: idle}
	g := startGateway(t, cfg)
	r := startRelay(t, g.addr)
	c, err := dial(t, r.addr, nil, cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := g.accepted(t)
	echoOnce(t, c, s)

	r.mu.Lock()
	r.cut = true
	r.mu.Unlock()
	for name, sess := range map[string]*tlsmux.Session{"client": c, "server": s} {
		select {
		case <-sess.Context().Done():
		case <-time.After(10 * idle):
			t.Fatalf("%s did not notice the dead peer", name)
		}
	}
}
