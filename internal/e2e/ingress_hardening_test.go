package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"

	"github.com/coder/websocket"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"

	"github.com/diglett/diglett"
)

// headerBackend sends the headers of every request it gets on a channel,
// with Host as a header, and answers "ok".
func headerBackend(t testing.TB) (string, <-chan http.Header) {
	seen := make(chan http.Header, 64)
	addr := startHTTPBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		h := r.Header.Clone()
		h.Set("Host", r.Host)
		seen <- h
		fmt.Fprint(w, "ok")
	}))
	return addr, seen
}

// h2Client is a client that speaks only HTTP/2 to g's HTTPS ingress.
func h2Client(t testing.TB, g *testGateway) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, g.HTTPSAddr)
		},
		TLSClientConfig:   &tls.Config{RootCAs: g.CA},
		ForceAttemptHTTP2: true,
	}
	var p http.Protocols
	p.SetHTTP2(true)
	tr.Protocols = &p
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: eventually}
}

// canonicalName is a header name as the gateway compares it: lower case,
// '_' read as '-'.
func canonicalName(k string) string {
	return strings.ReplaceAll(strings.ToLower(k), "_", "-")
}

// TestHTTPUntrustedForwardedHeaders: a visitor that is not a trusted proxy
// cannot make a backend believe another address, host, scheme or path
// (issue 10, item 7).
func TestHTTPUntrustedForwardedHeaders(t *testing.T) {
	checkLeaks(t)
	backend, seen := headerBackend(t)
	// Headers a visitor may not make a backend believe; the gateway sets
	// the four it vouches for itself.
	spoofed := []string{
		"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded",
		"X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Ssl", "X-Forwarded-Scheme",
		"X-Forwarded-Server", "X-Forwarded-Uri", "X-Forwarded-Anything", "X-Forwarded",
		"X-Real-IP", "True-Client-IP", "X-Client-IP", "Client-IP", "X-Cluster-Client-IP",
		"X-Originating-IP", "X-Remote-IP", "X-Remote-Addr", "X-Host", "X-Original-URL", "X-Rewrite-URL",
		"X_Forwarded_For", "x_forwarded_host", "X_Forwarded_Proto", "X-Forwarded_Port",
		"X_Real_IP", "true_client_ip", "X_ORIGINAL_URL",
	}
	var req strings.Builder
	req.WriteString("GET / HTTP/1.1\r\nHost: fwd.gw.test\r\nConnection: close\r\nX-Kept: yes\r\n")
	for _, k := range spoofed {
		fmt.Fprintf(&req, "%s: spoofed\r\n", k)
	}
	req.WriteString("\r\n")
	vouched := map[string]string{
		"x-forwarded-for":   "127.0.0.1",
		"x-forwarded-host":  "fwd.gw.test",
		"x-forwarded-proto": "http",
		"forwarded":         `for=127.0.0.1;host="fwd.gw.test";proto=http`,
	}

	t.Run("untrusted peer", func(t *testing.T) {
		g := httpGateway(t, gatewayOptions{})
		startHTTPAgent(t, g, "fwd", backend)
		if code, body := rawHTTP(t, g.HTTPAddr, req.String()); code != 200 {
			t.Fatalf("status %d %q", code, body)
		}
		h := <-seen
		for k, vs := range h {
			name := canonicalName(k)
			if want, ok := vouched[name]; ok {
				if len(vs) != 1 || vs[0] != want || k != http.CanonicalHeaderKey(name) {
					t.Errorf("backend saw %s: %q, want %q", k, vs, want)
				}
				continue
			}
			for _, s := range spoofed {
				if canonicalName(s) == name {
					t.Errorf("backend saw %s: %q from an untrusted visitor", k, vs)
				}
			}
		}
		if h.Get("X-Kept") != "yes" {
			t.Errorf("an ordinary header was dropped: %v", h)
		}
	})
	t.Run("trusted proxy", func(t *testing.T) {
		g := httpGateway(t, gatewayOptions{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
		startHTTPAgent(t, g, "fwd", backend)
		if code, body := rawHTTP(t, g.HTTPAddr, req.String()); code != 200 {
			t.Fatalf("status %d %q", code, body)
		}
		h := <-seen
		for _, k := range []string{"X-Forwarded-Port", "X-Forwarded-Prefix", "X-Real-Ip", "True-Client-Ip"} {
			if h.Get(k) != "spoofed" {
				t.Errorf("a trusted proxy's %s was not kept: %q", k, h.Values(k))
			}
		}
		if xff := h.Get("X-Forwarded-For"); xff != "spoofed, 127.0.0.1" {
			t.Errorf("X-Forwarded-For %q, want the proxy's value and its address", xff)
		}
	})
}

// TestHTTPHostPortValidated: a Host (or :authority) with a port that is
// not a number is refused, and the backend is told the validated host
// (issue 10, item 7).
func TestHTTPHostPortValidated(t *testing.T) {
	checkLeaks(t)
	g := httpGateway(t, gatewayOptions{})
	backend, seen := headerBackend(t)
	startHTTPAgent(t, g, "fwd", backend)
	h2 := h2Client(t, g)
	for _, tc := range []struct {
		host string
		code int
		want string // the host the backend is told
	}{
		{"fwd.gw.test:1,evil.com", 400, ""},
		{"fwd.gw.test:abc", 400, ""},
		{"fwd.gw.test:", 400, ""},
		{"fwd.gw.test:65536", 400, ""},
		{"fwd.gw.test:+80", 400, ""},
		{"fwd.gw.test:-1", 400, ""},
		{"fwd.gw.test:1:2", 400, ""},
		{"fwd.gw.test:99999999999999999999", 400, ""},
		{"fwd.gw.test:8080", 200, "fwd.gw.test:8080"},
		{"FWD.GW.Test.:0443", 200, "fwd.gw.test:443"},
		{"Fwd.gw.test", 200, "fwd.gw.test"},
	} {
		t.Run(tc.host, func(t *testing.T) {
			check := func(t *testing.T, code int, body string) {
				t.Helper()
				if code != tc.code {
					t.Fatalf("status %d %q, want %d", code, body, tc.code)
				}
				if tc.code != 200 {
					if strings.Contains(body, "evil") {
						t.Errorf("the error page repeats the host: %q", body)
					}
					return
				}
				h := <-seen
				fwd := fmt.Sprintf(`for=127.0.0.1;host="%s";proto=`, tc.want)
				if h.Get("X-Forwarded-Host") != tc.want || !strings.HasPrefix(h.Get("Forwarded"), fwd) || h.Get("Host") != tc.want {
					t.Errorf("backend told Host %q, X-Forwarded-Host %q, Forwarded %q; want %q",
						h.Get("Host"), h.Get("X-Forwarded-Host"), h.Get("Forwarded"), tc.want)
				}
			}
			t.Run("HTTP/1.1", func(t *testing.T) {
				code, body := rawHTTP(t, g.HTTPAddr, "GET / HTTP/1.1\r\nHost: "+tc.host+"\r\nConnection: close\r\n\r\n")
				check(t, code, body)
			})
			t.Run("HTTP/2", func(t *testing.T) {
				req, _ := http.NewRequest("GET", "https://fwd.gw.test/", nil)
				req.Host = tc.host // the :authority pseudo-header
				resp, err := h2.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.ProtoMajor != 2 {
					t.Fatalf("answered over %s", resp.Proto)
				}
				check(t, resp.StatusCode, string(b))
			})
		})
	}
}

// bodyBackend reads each request's body, reports how the read ended on a
// channel, and answers with the body it read. With early set it sends
// the response headers before reading the body.
func bodyBackend(t testing.TB, early bool) (string, <-chan error) {
	ended := make(chan error, 1024)
	addr := startHTTPBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if early {
			w.WriteHeader(200)
			http.NewResponseController(w).Flush()
		}
		b, err := io.ReadAll(r.Body)
		ended <- err
		if err == nil {
			w.Write(b)
		}
	}))
	return addr, ended
}

// trickle writes body to w a byte at a time, every, then closes w if it
// is a closer.
func trickle(w io.Writer, body string, every time.Duration) error {
	for i := range len(body) {
		if i > 0 {
			time.Sleep(every) // the pace of the upload is the point
		}
		if _, err := io.WriteString(w, body[i:i+1]); err != nil {
			return err
		}
	}
	if c, ok := w.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// expectBodyEnded waits for the backend to see its request body cut short.
func expectBodyEnded(t *testing.T, ended <-chan error) {
	t.Helper()
	select {
	case err := <-ended:
		if err == nil {
			t.Fatal("the backend read a whole body, want it cut short")
		}
	case <-time.After(promptly):
		t.Fatal("the backend still waits for the body")
	}
}

// TestHTTPBodyReadTimeout: a request body that stalls ends its request,
// one that keeps moving slowly does not (issue 10, item 8).
func TestHTTPBodyReadTimeout(t *testing.T) {
	checkLeaks(t)
	g := httpGateway(t, gatewayOptions{BodyReadTimeout: time.Second})
	backend, ended := bodyBackend(t, false)
	startHTTPAgent(t, g, "up", backend)
	early, earlyEnded := bodyBackend(t, true)
	startHTTPAgent(t, g, "early", early)
	h2 := h2Client(t, g)
	const slow = "slow but moving"

	t.Run("stalled body HTTP/1.1", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", g.HTTPAddr, promptly)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "POST / HTTP/1.1\r\nHost: up.gw.test\r\nContent-Length: 100000000\r\n\r\nfirst bytes")
		c.SetReadDeadline(time.Now().Add(promptly))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("no answer to a stalled body: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestTimeout || !resp.Close {
			t.Fatalf("status %d (close %v), want 408 and the connection closed", resp.StatusCode, resp.Close)
		}
		expectBodyEnded(t, ended)
	})
	t.Run("stalled body HTTP/2", func(t *testing.T) {
		pr, pw := io.Pipe()
		defer pw.Close()
		req, _ := http.NewRequest("POST", "https://up.gw.test/", pr)
		req.ContentLength = 100000000
		go io.WriteString(pw, "first bytes")
		resp, err := h2.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestTimeout || resp.ProtoMajor != 2 {
			t.Fatalf("%s %d, want HTTP/2 408", resp.Proto, resp.StatusCode)
		}
		expectBodyEnded(t, ended)
	})
	t.Run("stalled body after the response started", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", g.HTTPAddr, promptly)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "POST / HTTP/1.1\r\nHost: early.gw.test\r\nContent-Length: 100000000\r\n\r\nfirst bytes")
		c.SetReadDeadline(time.Now().Add(promptly))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("no response: %v", err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		if err == nil || errorsIsTimeout(err) {
			t.Fatalf("response body ended with %v, want the connection closed", err)
		}
		expectBodyEnded(t, earlyEnded)
	})
	t.Run("slow upload HTTP/1.1", func(t *testing.T) {
		t.Parallel()
		c, err := net.DialTimeout("tcp", g.HTTPAddr, promptly)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: up.gw.test\r\nContent-Length: %d\r\n\r\n", len(slow))
		if err := trickle(struct{ io.Writer }{c}, slow, 200*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(eventually))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != slow {
			t.Fatalf("status %d body %q, want 200 %q", resp.StatusCode, b, slow)
		}
	})
	t.Run("slow upload HTTP/2", func(t *testing.T) {
		t.Parallel()
		pr, pw := io.Pipe()
		req, _ := http.NewRequest("POST", "https://up.gw.test/", pr)
		req.ContentLength = int64(len(slow))
		errc := make(chan error, 1)
		go func() { errc <- trickle(pw, slow, 200*time.Millisecond) }()
		resp, err := h2.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || string(b) != slow || resp.ProtoMajor != 2 {
			t.Fatalf("%s %d body %q, want HTTP/2 200 %q", resp.Proto, resp.StatusCode, b, slow)
		}
	})
}

// localClient is a client of g's HTTP ingress whose connections come from
// the loopback address ip.
func localClient(t testing.TB, g *testGateway, ip string) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
			return d.DialContext(ctx, network, g.HTTPAddr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: eventually}
}

// TestHTTPRequestsPerSource: 300 trickling uploads from one address take
// only its quota of requests in flight, the rest are refused at once, the
// body timeout ends those admitted when they stall, and other addresses
// and tunnels are served throughout (issue 10, item 8).
func TestHTTPRequestsPerSource(t *testing.T) {
	checkLeaks(t)
	const (
		limit     = 32
		tricklers = 300
	)
	g := httpGateway(t, gatewayOptions{BodyReadTimeout: time.Second, MaxRequestsPerSource: limit})
	var started atomic.Int32
	ended := make(chan error, tricklers)
	backend := startHTTPBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" {
			started.Add(1)
		}
		_, err := io.Copy(io.Discard, r.Body)
		if r.Method == "POST" {
			ended <- err
		}
		fmt.Fprint(w, "up")
	}))
	startHTTPAgent(t, g, "up", backend)
	startHTTPAgent(t, g, "other", nameBackend(t, "other"))

	// Tricklers from 127.0.0.1 announce a large body and send a byte of
	// it every 200ms (well within the body timeout) until keep closes;
	// then they go silent.
	keep := make(chan struct{})
	codes := make(chan int, tricklers)
	var wg sync.WaitGroup
	trickler := func() {
		defer wg.Done()
		c, err := net.DialTimeout("tcp", g.HTTPAddr, promptly)
		if err != nil {
			t.Error(err)
			codes <- 0
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Minute))
		io.WriteString(c, "POST / HTTP/1.1\r\nHost: up.gw.test\r\nContent-Length: 100000000\r\n\r\n")
		answered := make(chan int, 1)
		go func() {
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				answered <- 0
				return
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusTooManyRequests && resp.Header.Get("Retry-After") == "" {
				t.Error("429 without Retry-After")
			}
			answered <- resp.StatusCode
		}()
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case code := <-answered:
				codes <- code
				return
			case <-tick.C:
				select {
				case <-keep:
				default:
					c.Write([]byte("x"))
				}
			}
		}
	}
	// The first ones take the source's whole quota...
	for range limit {
		wg.Add(1)
		go trickler()
	}
	err := testutil.Poll(eventually, func() error {
		if n := started.Load(); n < limit {
			return fmt.Errorf("%d requests reached the backend", n)
		}
		return nil
	})
	if err != nil {
		close(keep)
		wg.Wait()
		t.Fatal(err)
	}
	// ...and the others are refused at once.
	for range tricklers - limit {
		wg.Add(1)
		go trickler()
	}
	count := func(n int, what string) map[int]int {
		t.Helper()
		got := make(map[int]int)
		timeout := time.After(eventually)
		for range n {
			select {
			case code := <-codes:
				got[code]++
			case <-timeout:
				t.Errorf("%s: only %v answered", what, got)
				return got
			}
		}
		return got
	}
	if got := count(tricklers-limit, "beyond the quota"); got[http.StatusTooManyRequests] != tricklers-limit {
		t.Errorf("beyond the quota: statuses %v, want %d times 429", got, tricklers-limit)
	}
	if n := g.HTTPSourceRefusals(); n != tricklers-limit {
		t.Errorf("refusals counted: %d, want %d", n, tricklers-limit)
	}
	if n := started.Load(); n != limit {
		t.Errorf("%d requests reached the backend, want %d", n, limit)
	}

	// Other sources reach every tunnel meanwhile; this one reaches none.
	other := localClient(t, g, "127.0.0.2")
	for _, name := range []string{"up", "other"} {
		if code, body := get(t, other, "http://"+name+".gw.test/"); code != 200 || body != name {
			t.Errorf("another source, tunnel %s: %d %q", name, code, body)
		}
	}
	if code, _ := get(t, localClient(t, g, "127.0.0.1"), "http://other.gw.test/"); code != http.StatusTooManyRequests {
		t.Errorf("the full source, another tunnel: status %d, want 429", code)
	}

	// The refusals are logged once, not once each: the first at once,
	// the others summed up when the interval ends.
	if n := strings.Count(g.Logs.String(), "in flight from one source"); n != 1 {
		t.Errorf("refusals logged %d times, want once", n)
	}

	// When the tricklers go silent, the body timeout ends each of them.
	close(keep)
	if got := count(limit, "silent tricklers"); got[http.StatusRequestTimeout] != limit {
		t.Errorf("silent tricklers: statuses %v, want %d times 408", got, limit)
	}
	for range limit {
		expectBodyEnded(t, ended)
	}
	wg.Wait()
	// The source's slots are free again.
	if code, body := get(t, localClient(t, g, "127.0.0.1"), "http://other.gw.test/"); code != 200 || body != "other" {
		t.Errorf("after the tricklers: %d %q", code, body)
	}
}

// TestHTTPUpgradeH2C: a visitor's offer to switch to h2c never reaches a
// backend, WebSocket upgrades do (issue 10, item 11).
func TestHTTPUpgradeH2C(t *testing.T) {
	checkLeaks(t)
	g := httpGateway(t, gatewayOptions{})
	// A backend that takes h2c upgrades, and WebSockets.
	seen := make(chan http.Header, 8)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "websocket" {
			c, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			defer c.CloseNow()
			typ, msg, err := c.Read(r.Context())
			if err == nil {
				c.Write(r.Context(), typ, msg)
			}
			return
		}
		h := r.Header.Clone()
		h.Set("Proto", r.Proto)
		seen <- h
		fmt.Fprint(w, "ok")
	})
	backend := startHTTPBackend(t, h2c.NewHandler(h, &http2.Server{}))
	startHTTPAgent(t, g, "up", backend)
	// The same backend on a tunnel that asks for HTTP/2 without TLS.
	startHTTPAgent(t, g, "h2", backend, func(c *diglett.Config) { c.H2C = true })

	for _, tc := range []struct{ host, proto string }{{"up", "HTTP/1.1"}, {"h2", "HTTP/2.0"}} {
		for _, req := range []string{
			"GET / HTTP/1.1\r\nHost: " + tc.host + ".gw.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
			"GET / HTTP/1.1\r\nHost: " + tc.host + ".gw.test\r\nConnection: upgrade\r\nUpgrade: H2C\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
		} {
			br := sendRaw(t, g.HTTPAddr, req)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "ok" {
				t.Fatalf("%q: %s %d %q, want 200 ok (no switch to h2c)", req, resp.Proto, resp.StatusCode, b)
			}
			h := <-seen
			if h.Get("Proto") != tc.proto || h.Get("Upgrade") != "" || h.Get("Http2-Settings") != "" ||
				strings.Contains(strings.ToLower(strings.Join(h.Values("Connection"), ",")), "upgrade") {
				t.Fatalf("%q: the backend saw %v, want %s without the upgrade", req, h, tc.proto)
			}
		}
	}

	// WebSocket upgrades still go through.
	ctx, cancel := context.WithTimeout(t.Context(), eventually)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://up.gw.test/", &websocket.DialOptions{HTTPClient: g.httpClient(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if err := c.Write(ctx, websocket.MessageText, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := c.Read(ctx); err != nil || !bytes.Equal(msg, []byte("hello")) {
		t.Fatalf("echo %q, %v", msg, err)
	}
	c.Close(websocket.StatusNormalClosure, "")
}
