package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"

	"github.com/diglett/diglett"
)

// testDomain is the domain of test gateways' HTTP ingress.
const testDomain = "gw.test"

// startHTTPBackend serves h on a new 127.0.0.1 port until the test ends.
func startHTTPBackend(t testing.TB, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: eventually}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return ln.Addr().String()
}

// nameBackend answers every request with its name.
func nameBackend(t testing.TB, name string) string {
	return startHTTPBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		fmt.Fprint(w, name)
	}))
}

// startHTTPAgent runs an agent of g publishing name, forwarding to backend.
func startHTTPAgent(t testing.TB, g *testGateway, name, backend string, opts ...func(*diglett.Config)) *diglett.Listener {
	t.Helper()
	cfg := agentConfig(t, g, name)
	cfg.Fingerprint = g.Fingerprint
	for _, o := range opts {
		o(&cfg)
	}
	ln := mustListen(t, cfg)
	forward(t, ln, backend)
	return ln
}

func httpGateway(t testing.TB, o gatewayOptions) *testGateway {
	t.Helper()
	o.Domain = testDomain
	return startGateway(t, o)
}

// get fetches url with c and returns the status and body.
func get(t testing.TB, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// sendRaw writes req as is on a new connection to addr, which is closed
// when the test ends, and returns a reader of the answer.
func sendRaw(t *testing.T, addr, req string) *bufio.Reader {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, promptly)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(eventually))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	return bufio.NewReader(c)
}

// getErr fetches url with c and returns the status, or the error.
func getErr(c *http.Client, url string) (int, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, err = io.ReadAll(resp.Body)
	return resp.StatusCode, err
}

// rawHTTP sends req as is to addr and returns the first response's status
// and body.
func rawHTTP(t *testing.T, addr, req string) (int, string) {
	t.Helper()
	resp, err := http.ReadResponse(sendRaw(t, addr, req), nil)
	if err != nil {
		t.Fatalf("read response to %q: %v", req, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b)
}

// rawHTTPAll sends req as is to addr and returns the status of every
// response until the gateway closes the connection.
func rawHTTPAll(t *testing.T, addr, req string) []int {
	t.Helper()
	br := sendRaw(t, addr, req)
	var codes []int
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			if errorsIsTimeout(err) {
				t.Fatalf("connection still open after %v", codes)
			}
			return codes
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		codes = append(codes, resp.StatusCode)
	}
}

func TestHTTPHostRouting(t *testing.T) {
	checkLeaks(t)
	g := httpGateway(t, gatewayOptions{})
	startHTTPAgent(t, g, "alpha", nameBackend(t, "alpha"))
	ln := startHTTPAgent(t, g, "beta", nameBackend(t, "beta"))
	c := g.httpClient(t)

	tn := ln.Tunnels()[0]
	_, port, _ := net.SplitHostPort(g.HTTPAddr)
	if want := "http://beta." + testDomain + ":" + port; tn.HTTPURL != want {
		t.Errorf("HTTPURL = %q, want %q", tn.HTTPURL, want)
	}
	_, port, _ = net.SplitHostPort(g.HTTPSAddr)
	if want := "https://beta." + testDomain + ":" + port; tn.HTTPSURL != want {
		t.Errorf("HTTPSURL = %q, want %q", tn.HTTPSURL, want)
	}

	for _, tc := range []struct {
		host string
		code int
		body string
	}{
		{"alpha.gw.test", 200, "alpha"},
		{"beta.gw.test", 200, "beta"},
		{"ALPHA.GW.Test", 200, "alpha"},
		{"alpha.gw.test.", 200, "alpha"},
		{"alpha.gw.test:8080", 200, "alpha"},
		{"gamma.gw.test", 404, ""},
		{"gw.test", 404, ""},
		{"x.alpha.gw.test", 404, ""},
		{"alpha.other.test", 404, ""},
		{"alpha", 404, ""},
		{"127.0.0.1", 404, ""},
		{"[::1]:80", 404, ""},
	} {
		t.Run(tc.host, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "http://alpha.gw.test/", nil)
			req.Host = tc.host
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.code || (tc.code == 200 && string(b) != tc.body) {
				t.Fatalf("status %d body %q, want %d %q", resp.StatusCode, b, tc.code, tc.body)
			}
			if tc.code == 404 && strings.Contains(string(b), "alpha") {
				t.Errorf("404 page tells of a tunnel: %q", b)
			}
		})
	}

	// Over HTTPS, with HTTP/2.
	resp, err := c.Get("https://alpha.gw.test/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "alpha" || resp.ProtoMajor != 2 {
		t.Fatalf("HTTPS: %s %d %q, want HTTP/2 200 alpha", resp.Proto, resp.StatusCode, b)
	}

	// An absolute-form request is routed by its URL's host (the Host
	// header is ignored, as the HTTP standard says of proxies).
	code, body := rawHTTP(t, g.HTTPAddr, "GET http://beta.gw.test/ HTTP/1.1\r\nHost: alpha.gw.test\r\nConnection: close\r\n\r\n")
	if code != 200 || body != "beta" {
		t.Fatalf("absolute form: %d %q, want 200 beta", code, body)
	}
}

func TestHTTPErrorCodes(t *testing.T) {
	parallel(t)
	g := httpGateway(t, gatewayOptions{ResponseTimeout: time.Second, Lease: time.Minute})
	c := g.httpClient(t)

	t.Run("404 unknown host", func(t *testing.T) {
		if code, _ := get(t, c, "http://nobody.gw.test/"); code != 404 {
			t.Fatalf("status %d, want 404", code)
		}
	})
	t.Run("502 backend refused", func(t *testing.T) {
		startHTTPAgent(t, g, "refused", unusedAddr(t))
		code, body := get(t, c, "http://refused.gw.test/")
		if code != 502 {
			t.Fatalf("status %d, want 502", code)
		}
		if strings.Contains(body, "127.0.0.1") || strings.Contains(body, "dial") {
			t.Errorf("502 page leaks internals: %q", body)
		}
	})
	t.Run("504 backend answers too late", func(t *testing.T) {
		release := make(chan struct{})
		t.Cleanup(func() { close(release) })
		slow := startHTTPBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}))
		startHTTPAgent(t, g, "slow", slow)
		if code, _ := get(t, c, "http://slow.gw.test/"); code != 504 {
			t.Fatalf("status %d, want 504", code)
		}
	})
	t.Run("504 backend connection timed out", func(t *testing.T) {
		cfg := agentConfig(t, g, "timeout")
		cfg.Fingerprint = g.Fingerprint
		ln := mustListen(t, cfg)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.(*diglett.Conn).Abort(os.ErrDeadlineExceeded)
			}
		}()
		if code, _ := get(t, c, "http://timeout.gw.test/"); code != 504 {
			t.Fatalf("status %d, want 504", code)
		}
	})
	t.Run("503 no agent online", func(t *testing.T) {
		ln := startHTTPAgent(t, g, "gone", nameBackend(t, "gone"))
		if code, _ := get(t, c, "http://gone.gw.test/"); code != 200 {
			t.Fatalf("before: status %d, want 200", code)
		}
		ln.Close()
		err := testutil.Poll(eventually, func() error {
			if code, _ := get(t, c, "http://gone.gw.test/"); code != 503 {
				return fmt.Errorf("status %d, want 503 while the name is leased", code)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

func TestHTTPGroupBalancing(t *testing.T) {
	parallel(t)
	g := httpGateway(t, gatewayOptions{})
	var hits [3]atomic.Int64
	var agents [3]*diglett.Listener
	for i := range agents {
		b := startHTTPBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits[i].Add(1)
			io.Copy(io.Discard, r.Body)
			fmt.Fprintf(w, "member %d", i)
		}))
		agents[i] = startHTTPAgent(t, g, "group", b)
	}
	c := g.httpClient(t)

	// One visitor, one request at a time: still spread over all three.
	for range 60 {
		if code, _ := get(t, c, "http://group.gw.test/"); code != 200 {
			t.Fatalf("status %d", code)
		}
	}
	for i := range hits {
		if n := hits[i].Load(); n < 10 {
			t.Errorf("member %d served %d of 60 requests", i, n)
		}
	}

	// Under load, one member leaves: requests started after it left all
	// succeed.
	l := startLoad(t, 8, func(int, int) error {
		code, err := getErr(c, "http://group.gw.test/")
		if err == nil && code != 200 {
			err = fmt.Errorf("status %d", code)
		}
		return err
	})
	time.Sleep(300 * time.Millisecond)
	agents[0].Close()
	l.mark()
	time.Sleep(time.Second)
	l.finish(t, "one member left")
}

// errorsIsTimeout reports whether err is a timeout.
func errorsIsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestHTTPGroupRetry checks that a request that cannot reach one member's
// backend goes to another member before the visitor sees an error.
func TestHTTPGroupRetry(t *testing.T) {
	checkLeaks(t)
	g := httpGateway(t, gatewayOptions{})
	startHTTPAgent(t, g, "group", unusedAddr(t))
	startHTTPAgent(t, g, "group", startHTTPBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "good %s", b)
	})))
	c := g.httpClient(t)
	for i := range 20 {
		resp, err := c.Post("http://group.gw.test/", "text/plain", strings.NewReader(fmt.Sprint(i)))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != fmt.Sprintf("good %d", i) {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, b)
		}
	}
}

// TestHTTPStreamReuse checks that requests reuse idle streams, as
// keep-alive connections: the agent dials its backend once per stream.
func TestHTTPStreamReuse(t *testing.T) {
	checkLeaks(t)
	g := httpGateway(t, gatewayOptions{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	counted := &countingListener{Listener: ln}
	// In a round, the backend holds every request until all eight have
	// arrived: eight requests are in flight at once.
	var (
		mu      sync.Mutex
		waiting int
		release = make(chan struct{})
	)
	const width = 8
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/round" {
			mu.Lock()
			waiting++
			ch := release
			if waiting == width {
				waiting = 0
				close(release)
				release = make(chan struct{})
			}
			mu.Unlock()
			select {
			case <-ch:
			case <-r.Context().Done():
			}
		}
		fmt.Fprint(w, "ok")
	})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(counted)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	startHTTPAgent(t, g, "reuse", ln.Addr().String())
	c := g.httpClient(t)
	for range 50 {
		if code, _ := get(t, c, "http://reuse.gw.test/"); code != 200 {
			t.Fatalf("status %d", code)
		}
	}
	if n := counted.accepts.Load(); n != 1 {
		t.Fatalf("50 requests one after the other opened %d streams, want 1", n)
	}
	round := func() {
		var wg sync.WaitGroup
		for range width {
			wg.Add(1)
			go func() {
				defer wg.Done()
				get(t, c, "http://reuse.gw.test/round")
			}()
		}
		wg.Wait()
	}
	// The first round opens the streams it needs (perhaps one more, when
	// a stream frees up while another is being opened); later rounds find
	// them idle. A round's last response can reach the client a moment
	// before its stream is back among the idle ones, so on a loaded
	// machine the next round may open one: three rounds that reused
	// nothing would open 24.
	round()
	warm := counted.accepts.Load()
	if warm < width {
		t.Fatalf("%d requests in flight at once on %d streams", width, warm)
	}
	for range 3 {
		round()
	}
	if n := counted.accepts.Load(); n > warm+1 {
		t.Fatalf("with %d idle streams, three rounds of %d requests at once opened %d more", warm, width, n-warm)
	}
}

type countingListener struct {
	net.Listener
	accepts atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepts.Add(1)
	}
	return c, err
}

// TestHTTPLimits checks the bounds on what a visitor may send: header size,
// and the time to send headers (or finish a TLS handshake).
func TestHTTPLimits(t *testing.T) {
	checkLeaks(t)
	g := httpGateway(t, gatewayOptions{ReadHeaderTimeout: time.Second})
	startHTTPAgent(t, g, "app", nameBackend(t, "app"))

	big := "GET / HTTP/1.1\r\nHost: app.gw.test\r\nX-Big: " + strings.Repeat("a", 100<<10) + "\r\n\r\n"
	if code, _ := rawHTTP(t, g.HTTPAddr, big); code != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("100 KiB of headers: status %d, want 431", code)
	}
	for _, tc := range []struct{ name, addr, partial string }{
		{"http headers", g.HTTPAddr, "GET / HTTP/1.1\r\nHost: app.gw.test\r\n"},
		{"tls handshake", g.HTTPSAddr, "\x16\x03\x01\x02\x00\x01"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", tc.addr, promptly)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			io.WriteString(c, tc.partial)
			// The gateway gives up after a second; "eventually" is far
			// beyond.
			c.SetReadDeadline(time.Now().Add(eventually))
			_, err = io.Copy(io.Discard, c)
			if errorsIsTimeout(err) {
				t.Fatalf("connection still open after %v", eventually)
			}
		})
	}
}
