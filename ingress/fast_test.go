package ingress

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/transport/mux"
)

// relayMember is an agent session whose streams reach a real backend over
// loopback TCP, relayed as the agent relays them (its status byte, then
// the bytes both ways, the stream closed when the backend closes). Its
// streams are those of a multiplexer session over loopback TCP, as an
// agent's are, or with pipe set, in-memory pipes (which have no tap).
type relayMember struct {
	id      uint64
	backend string
	pipe    bool
	ctx     context.Context
	leave   context.CancelFunc
	opened  atomic.Int64
	wg      sync.WaitGroup
	cs, ss  *mux.Session // the gateway's end, the agent's
}

func newRelayMember(t *testing.T, id uint64, backend string, pipe bool) *relayMember {
	ctx, cancel := context.WithCancel(context.Background())
	m := &relayMember{id: id, backend: backend, pipe: pipe, ctx: ctx, leave: cancel}
	if !pipe {
		a, b := testutil.LoopbackPair(t)
		m.cs, m.ss = mux.Client(a, mux.Config{}), mux.Server(b, mux.Config{})
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			for {
				st, err := m.ss.AcceptStream(context.Background())
				if err != nil {
					return
				}
				m.wg.Add(1)
				go func() {
					defer m.wg.Done()
					m.relay(st)
				}()
			}
		}()
	}
	t.Cleanup(func() {
		cancel()
		if m.cs != nil {
			m.cs.Close()
			m.ss.Close()
		}
		m.wg.Wait()
	})
	return m
}

func (m *relayMember) ID() uint64               { return m.id }
func (m *relayMember) Serves(string) bool       { return m.ctx.Err() == nil }
func (m *relayMember) Context() context.Context { return m.ctx }
func (m *relayMember) OpenStream(ctx context.Context, name, visitor string) (net.Conn, error) {
	m.opened.Add(1)
	if !m.pipe {
		return m.cs.OpenStream(ctx)
	}
	ours, agent := net.Pipe()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.relay(agent)
	}()
	return ours, nil
}

// relay serves the agent's end of a stream: its status, then the backend.
func (m *relayMember) relay(agent net.Conn) {
	defer agent.Close()
	bc, err := net.Dial("tcp", m.backend)
	if err != nil {
		agent.Write([]byte{byte(protocol.StatusRefused)})
		return
	}
	defer bc.Close()
	if _, err := agent.Write([]byte{byte(protocol.StatusOK)}); err != nil {
		return
	}
	go func() {
		io.Copy(bc, agent)
		bc.Close()
	}()
	io.Copy(agent, bc)
}

var _ gateway.Member = (*relayMember)(nil)

type h2cRules struct{ openRules }

func (h2cRules) H2C() bool { return true }

type rulesTunnel struct {
	*fakeTunnel
	rules gateway.VisitorRules
}

func (t rulesTunnel) Visitors() gateway.VisitorRules { return t.rules }

type rulesGateway struct {
	fakeGateway
	t rulesTunnel
}

func (g *rulesGateway) Tunnel(name string) (gateway.HTTPTunnel, bool) {
	if name != g.t.name {
		return nil, false
	}
	return g.t, true
}

// fastSetup serves an ingress on loopback for tunnel "app" whose backend
// is h (a plain TCP backend if h is nil and raw is set); it returns the
// ingress's address, the member and the ingress.
type fastSetup struct {
	in   *Server
	addr string
	m    *relayMember
}

func startFast(t *testing.T, backend string, rules gateway.VisitorRules) *fastSetup {
	t.Helper()
	return startFastWith(t, backend, rules, false)
}

// startFastWith is startFast with the member's streams in-memory pipes
// when pipe is set, and the visitors' listener wrapped by wrap if given.
func startFastWith(t *testing.T, backend string, rules gateway.VisitorRules, pipe bool, wrap ...func(net.Listener) net.Listener) *fastSetup {
	t.Helper()
	return startFastFull(t, backend, rules, pipe, nil, wrap...)
}

// startFastConfig is startFast with the ingress's Config changed by cfg.
func startFastConfig(t *testing.T, backend string, cfg func(*Config)) *fastSetup {
	t.Helper()
	return startFastFull(t, backend, nil, false, cfg)
}

func startFastFull(t *testing.T, backend string, rules gateway.VisitorRules, pipe bool, cfg func(*Config), wrap ...func(net.Listener) net.Listener) *fastSetup {
	t.Helper()
	m := newRelayMember(t, 1, backend, pipe)
	var gw Gateway
	ft := &fakeTunnel{name: "app", members: []gateway.Member{m}}
	if rules != nil {
		gw = &rulesGateway{t: rulesTunnel{fakeTunnel: ft, rules: rules}}
	} else {
		gw = &fakeGateway{tunnels: map[string]*fakeTunnel{"app": ft}}
	}
	c := Config{Logger: slog.New(slog.DiscardHandler), StatusTimeout: 5 * time.Second}
	if cfg != nil {
		cfg(&c)
	}
	in := New(gw, c)
	var ln net.Listener
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range wrap {
		ln = w(ln)
	}
	served := make(chan error, 1)
	go func() { served <- in.Serve(ln, nil) }()
	t.Cleanup(func() {
		in.Close()
		if err := <-served; err != ErrServerClosed {
			t.Errorf("Serve: %v", err)
		}
	})
	return &fastSetup{in: in, addr: ln.Addr().String(), m: m}
}

// fastSum sums a counter of the ingress's forwarding paths.
func fastSum(in *Server, count func(*fastServer) int64) int64 {
	in.mu.Lock()
	defer in.mu.Unlock()
	var n int64
	for fs := range in.fast {
		n += count(fs)
	}
	return n
}

// fastServed is how many requests the ingress's forwarding paths took.
func fastServed(in *Server) int64 {
	return fastSum(in, func(fs *fastServer) int64 { return fs.served.Load() })
}

// answeringBackend serves the requests of each connection, one after the
// other, with what answer writes, until answer reports false or the
// connection ends.
func answeringBackend(t *testing.T, answer func(c net.Conn, r *http.Request) bool) string {
	t.Helper()
	return rawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			r, err := http.ReadRequest(br)
			if err != nil || !answer(c, r) {
				return
			}
		}
	})
}

// fastTapped is how many responses the receive loop wrote to visitors
// (resptap.go), and of those how many the socket did not take at once.
func fastTapped(in *Server) (n, left int64) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for fs := range in.fast {
		n += fs.tapped.Load()
		left += fs.tapLeft.Load()
	}
	return n, left
}

func httpBackend(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &p}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// rawBackend serves each connection with serve, on loopback.
func rawBackend(t *testing.T, serve func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

func noLeaks(t *testing.T) {
	t.Helper()
	opts := []goleak.Option{goleak.IgnoreCurrent()}
	t.Cleanup(func() {
		if err := testutil.Poll(10*time.Second, func() error { return goleak.Find(opts...) }); err != nil {
			t.Error(err)
		}
	})
}

func dialVisitor(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

func readResp(t *testing.T, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	for err == nil && resp.StatusCode == http.StatusContinue {
		resp, err = http.ReadResponse(br, &http.Request{Method: method})
	}
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp, string(b)
}

// echoPath answers with the request's path, and what it was told of the
// visitor.
var echoPath = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("X-Got-Host", r.Host)
	w.Header().Set("X-Got-For", r.Header.Get("X-Forwarded-For"))
	fmt.Fprintf(w, "%s %s %s", r.Proto, r.URL.Path, body)
})

// TestFastPathTaken: plain keep-alive requests take the forwarding path,
// one after the other on one pooled stream, with the forwarded headers,
// and the access log and observer see them.
func TestFastPathTaken(t *testing.T) {
	noLeaks(t)
	s := startFast(t, httpBackend(t, echoPath), nil)
	c, br := dialVisitor(t, s.addr)
	for i := range 5 {
		fmt.Fprintf(c, "GET /p%d HTTP/1.1\r\nHost: app.gw.test\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n", i)
		resp, body := readResp(t, br, "GET")
		if resp.StatusCode != 200 || body != fmt.Sprintf("HTTP/1.1 /p%d ", i) {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		if h, f := resp.Header.Get("X-Got-Host"), resp.Header.Get("X-Got-For"); h != "app.gw.test" || f != "127.0.0.1" {
			t.Errorf("backend told host %q, visitor %q", h, f)
		}
	}
	// A POST with a body, then a chunked one.
	fmt.Fprintf(c, "POST /up HTTP/1.1\r\nHost: app.gw.test\r\nContent-Length: 5\r\n\r\nhello")
	if _, body := readResp(t, br, "POST"); body != "HTTP/1.1 /up hello" {
		t.Fatalf("POST: %q", body)
	}
	fmt.Fprintf(c, "POST /ch HTTP/1.1\r\nHost: app.gw.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
	if _, body := readResp(t, br, "POST"); body != "HTTP/1.1 /ch abcde" {
		t.Fatalf("chunked POST: %q", body)
	}
	if n := fastServed(s.in); n != 7 {
		t.Errorf("%d requests took the forwarding path, want 7", n)
	}
	if n := s.m.opened.Load(); n != 1 {
		t.Errorf("%d streams opened for 7 requests one after the other, want 1", n)
	}
}

// TestFastRefusals: the gateway's own answers on the forwarding path are
// those of the standard one, and a body left unread is dropped to keep the
// connection.
func TestFastRefusals(t *testing.T) {
	noLeaks(t)
	s := startFast(t, httpBackend(t, echoPath), nil)
	c, br := dialVisitor(t, s.addr)
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: nope.gw.test\r\nContent-Length: 3\r\n\r\nabc")
	resp, body := readResp(t, br, "POST")
	if resp.StatusCode != http.StatusNotFound || body != "404 Not Found: no tunnel at this address\n" || resp.Close {
		t.Fatalf("unknown host: %d %q close=%v", resp.StatusCode, body, resp.Close)
	}
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: app.gw.test\r\n\r\n")
	if resp, _ := readResp(t, br, "GET"); resp.StatusCode != 200 {
		t.Fatalf("after a refusal: %d", resp.StatusCode)
	}
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: app.gw.test:x\r\n\r\n")
	if resp, _ := readResp(t, br, "GET"); resp.StatusCode != http.StatusBadRequest || !resp.Close {
		t.Fatalf("malformed host: %d close=%v", resp.StatusCode, resp.Close)
	}
	if n := fastServed(s.in); n != 3 {
		t.Errorf("%d requests took the forwarding path, want 3", n)
	}
}

// TestFastFallback: what the forwarding path does not take goes to the
// standard server, which answers it as before, even after the path has
// served requests on the connection.
func TestFastFallback(t *testing.T) {
	noLeaks(t)
	upgrade := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			echoPath(w, r)
			return
		}
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "echo")
		w.WriteHeader(http.StatusSwitchingProtocols)
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		line, _ := brw.ReadString('\n')
		brw.WriteString("echo: " + line)
		brw.Flush()
	})
	s := startFast(t, httpBackend(t, upgrade), nil)
	for _, tc := range []struct {
		name, req string
	}{
		{"HTTP/1.0", "GET /a HTTP/1.0\r\nHost: app.gw.test\r\n\r\n"},
		{"Expect", "POST /a HTTP/1.1\r\nHost: app.gw.test\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"},
		{"big head", "GET /a HTTP/1.1\r\nHost: app.gw.test\r\nX-Big: " + strings.Repeat("b", 5000) + "\r\nConnection: close\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := fastServed(s.in)
			c, br := dialVisitor(t, s.addr)
			io.WriteString(c, tc.req)
			resp, body := readResp(t, br, "GET")
			if resp.StatusCode != 200 || !strings.Contains(body, "/a") {
				t.Fatalf("%d %q", resp.StatusCode, body)
			}
			if n := fastServed(s.in) - before; n != 0 {
				t.Errorf("%d requests took the forwarding path, want 0", n)
			}
		})
	}
	t.Run("handover", func(t *testing.T) {
		before := fastServed(s.in)
		c, br := dialVisitor(t, s.addr)
		io.WriteString(c, "GET /a HTTP/1.1\r\nHost: app.gw.test\r\n\r\n")
		if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != "HTTP/1.1 /a " {
			t.Fatalf("first: %d %q", resp.StatusCode, body)
		}
		io.WriteString(c, "GET /up HTTP/1.1\r\nHost: app.gw.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %v %v", resp, err)
		}
		io.WriteString(c, "ping\n")
		if line, err := br.ReadString('\n'); line != "echo: ping\n" {
			t.Fatalf("upgraded: %q %v", line, err)
		}
		if n := fastServed(s.in) - before; n != 1 {
			t.Errorf("%d requests took the forwarding path, want 1", n)
		}
	})
}

// TestFastFallbackH2C: the requests of a tunnel whose backend speaks
// HTTP/2 without TLS go to the standard server.
func TestFastFallbackH2C(t *testing.T) {
	noLeaks(t)
	s := startFast(t, httpBackend(t, echoPath), h2cRules{})
	c, br := dialVisitor(t, s.addr)
	io.WriteString(c, "GET /a HTTP/1.1\r\nHost: app.gw.test\r\n\r\n")
	if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != "HTTP/2.0 /a " {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if n := fastServed(s.in); n != 0 {
		t.Errorf("%d requests took the forwarding path, want 0", n)
	}
}

// TestFastPipelined: requests sent together are answered in order.
func TestFastPipelined(t *testing.T) {
	noLeaks(t)
	s := startFast(t, httpBackend(t, echoPath), nil)
	c, br := dialVisitor(t, s.addr)
	var all bytes.Buffer
	for i := range 4 {
		fmt.Fprintf(&all, "GET /%d HTTP/1.1\r\nHost: app.gw.test\r\n\r\n", i)
	}
	fmt.Fprintf(&all, "POST /4 HTTP/1.1\r\nHost: app.gw.test\r\nContent-Length: 2\r\n\r\nok")
	c.Write(all.Bytes())
	for i := range 5 {
		if _, body := readResp(t, br, "GET"); !strings.HasPrefix(body, fmt.Sprintf("HTTP/1.1 /%d ", i)) {
			t.Fatalf("response %d: %q", i, body)
		}
	}
	if n := fastServed(s.in); n != 5 {
		t.Errorf("%d requests took the forwarding path, want 5", n)
	}
}

// TestFastChunkedVerbatim: chunked bodies, with their extensions and
// trailers, pass through byte for byte both ways.
func TestFastChunkedVerbatim(t *testing.T) {
	noLeaks(t)
	reqBody := "4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Sum: abc\r\n\r\n"
	respBody := "3\r\nfoo\r\nA;x\r\n0123456789\r\n0\r\nX-Tail: yes\r\n\r\n"
	got := make(chan string, 1)
	backend := rawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if line == "\r\n" {
				break
			}
		}
		b := make([]byte, len(reqBody))
		if _, err := io.ReadFull(br, b); err != nil {
			return
		}
		got <- string(b)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Tail\r\n\r\n"+respBody)
		br.ReadByte() // until the stream closes
	})
	s := startFast(t, backend, nil)
	c, br := dialVisitor(t, s.addr)
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: app.gw.test\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n"+reqBody)
	if b := <-got; b != reqBody {
		t.Fatalf("backend got %q", b)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if te := resp.TransferEncoding; len(te) != 1 || te[0] != "chunked" {
		t.Fatalf("transfer encoding %v", te)
	}
	b := make([]byte, len(respBody))
	if _, err := io.ReadFull(br, b); err != nil || string(b) != respBody {
		t.Fatalf("visitor got %q, %v", b, err)
	}
	if n := fastServed(s.in); n != 1 {
		t.Errorf("%d requests took the forwarding path, want 1", n)
	}
}

// TestFastMalformedChunk: a request body whose chunks cannot be followed
// is answered 400 with the connection closed.
func TestFastMalformedChunk(t *testing.T) {
	noLeaks(t)
	s := startFast(t, httpBackend(t, echoPath), nil)
	c, br := dialVisitor(t, s.addr)
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: app.gw.test\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n")
	resp, _ := readResp(t, br, "POST")
	if resp.StatusCode != http.StatusBadRequest || !resp.Close {
		t.Fatalf("%d close=%v", resp.StatusCode, resp.Close)
	}
}

// TestFastEOFResponse: a response delimited by the backend closing its
// connection is relayed, then the visitor's connection is closed.
func TestFastEOFResponse(t *testing.T) {
	noLeaks(t)
	backend := rawBackend(t, func(c net.Conn) {
		http.ReadRequest(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
	})
	s := startFast(t, backend, nil)
	c, br := dialVisitor(t, s.addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: app.gw.test\r\n\r\n")
	resp, body := readResp(t, br, "GET")
	if body != "until the end" || !resp.Close {
		t.Fatalf("%q close=%v", body, resp.Close)
	}
	if n, err := br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after the response: %d, %v; want the connection closed", n, err)
	}
}

// TestFastBackendDiesMidResponse: a response cut short by the backend
// ends the visitor's connection before its announced length.
func TestFastBackendDiesMidResponse(t *testing.T) {
	noLeaks(t)
	backend := rawBackend(t, func(c net.Conn) {
		http.ReadRequest(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
	})
	s := startFast(t, backend, nil)
	c, br := dialVisitor(t, s.addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: app.gw.test\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if string(b) != "only ten b" || err != io.ErrUnexpectedEOF {
		t.Fatalf("%q, %v; want 10 bytes then the connection cut", b, err)
	}
}

// TestFastStaleStream: a pooled stream the backend has closed is not
// used; the request goes on a new one.
func TestFastStaleStream(t *testing.T) {
	noLeaks(t)
	backend := rawBackend(t, func(c net.Conn) {
		http.ReadRequest(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		// and close: the agent closes the idle stream.
	})
	s := startFast(t, backend, nil)
	c, br := dialVisitor(t, s.addr)
	for i := range 3 {
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: app.gw.test\r\n\r\n")
		if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		// Let the close reach the pooled stream.
		if err := testutil.Poll(5*time.Second, func() error {
			if s.m.opened.Load() != int64(i+1) {
				return fmt.Errorf("%d streams opened", s.m.opened.Load())
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFastShutdown: Shutdown closes idle visitor connections at once and
// waits for a request in flight.
func TestFastShutdown(t *testing.T) {
	noLeaks(t)
	release := make(chan struct{})
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		io.WriteString(w, "done")
	})
	s := startFast(t, httpBackend(t, slow), nil)
	idle, ibr := dialVisitor(t, s.addr)
	io.WriteString(idle, "GET / HTTP/1.1\r\nHost: app.gw.test\r\n\r\n")
	readResp(t, ibr, "GET")
	busy, bbr := dialVisitor(t, s.addr)
	io.WriteString(busy, "GET /slow HTTP/1.1\r\nHost: app.gw.test\r\n\r\n")
	testutil.Poll(5*time.Second, func() error {
		if fastServed(s.in) != 2 {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	shut := make(chan error, 1)
	go func() { shut <- s.in.Shutdown(context.Background()) }()
	if n, err := ibr.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("idle connection: %d, %v; want closed", n, err)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned with a request in flight: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if resp, body := readResp(t, bbr, "GET"); resp.StatusCode != 200 || body != "done" {
		t.Fatalf("in flight: %d %q", resp.StatusCode, body)
	}
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
}

// TestFastHTTPS: on HTTPS, visitors that chose HTTP/1.1 take the
// forwarding path, told the scheme; HTTP/2 ones the standard server.
func TestFastHTTPS(t *testing.T) {
	noLeaks(t)
	echoProto := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Header.Get("X-Forwarded-Proto"))
	})
	m := newRelayMember(t, 1, httpBackend(t, echoProto), false)
	gw := &fakeGateway{tunnels: map[string]*fakeTunnel{"app": {name: "app", members: []gateway.Member{m}}}}
	in := New(gw, Config{Logger: slog.New(slog.DiscardHandler), StatusTimeout: 5 * time.Second})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- in.ServeHTTPS(ln, testutil.ServerTLS(t)) }()
	defer func() {
		in.Close()
		if err := <-served; err != ErrServerClosed {
			t.Errorf("ServeHTTPS: %v", err)
		}
	}()
	for _, tc := range []struct {
		proto string
		h2    bool
		fast  int64
	}{{"HTTP/1.1", false, 1}, {"HTTP/2.0", true, 0}} {
		before := fastServed(in)
		tr := &http.Transport{
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true, ServerName: "app.gw.test"},
			ForceAttemptHTTP2: tc.h2,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", ln.Addr().String())
			},
		}
		if !tc.h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://app.gw.test/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		tr.CloseIdleConnections()
		if resp.Proto != tc.proto || string(body) != "https" {
			t.Errorf("%s: %s %q", tc.proto, resp.Proto, body)
		}
		if n := fastServed(in) - before; n != tc.fast {
			t.Errorf("%s: %d requests took the forwarding path, want %d", tc.proto, n, tc.fast)
		}
	}
}
