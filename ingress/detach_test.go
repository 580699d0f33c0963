package ingress

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/transport/mux"
)

// fastEnded is how many requests the receive loop ended (detach.go).
func fastEnded(in *Server) int64 {
	return fastSum(in, func(fs *fastServer) int64 { return fs.ended.Load() })
}

// waitAccessLines waits for log to hold n access lines.
func waitAccessLines(t *testing.T, log *testutil.Buffer, n int) {
	t.Helper()
	if err := testutil.Poll(5*time.Second, func() error {
		if got := strings.Count(log.String(), "msg=\"http request\""); got != n {
			return fmt.Errorf("%d access lines, want %d", got, n)
		}
		return nil
	}); err != nil {
		t.Fatalf("%v:\n%s", err, log.String())
	}
}

// waitAccessLine waits for log to hold an access line with want.
func waitAccessLine(t *testing.T, log *testutil.Buffer, want string) {
	t.Helper()
	if err := testutil.Poll(5*time.Second, func() error {
		if !strings.Contains(log.String(), want) {
			return fmt.Errorf("no access line with %q", want)
		}
		return nil
	}); err != nil {
		t.Fatalf("%v:\n%s", err, log.String())
	}
}

// startDetach is startFast with cfg's timeouts and an access log in buf.
func startDetach(t *testing.T, backend string, responseTimeout time.Duration, buf *testutil.Buffer) *fastSetup {
	t.Helper()
	return startFastConfig(t, backend, func(c *Config) {
		c.ResponseTimeout = responseTimeout
		c.IdleTimeout = time.Minute
		c.AccessLog = slog.New(slog.NewTextHandler(buf, nil))
	})
}

// Requests without a body, one after the other on a keep-alive
// connection, are ended by the receive loop: each response whole and
// right, each with its access line, all on one pooled stream.
func TestDetachedEnds(t *testing.T) {
	noLeaks(t)
	var log testutil.Buffer
	s := startDetach(t, httpBackend(t, echoPath), time.Minute, &log)
	c, br := dialVisitor(t, s.addr)
	const n = 20
	for i := range n {
		fmt.Fprintf(c, "GET /p%d HTTP/1.1\r\nHost: app.gw.test\r\n\r\n", i)
		resp, body := readResp(t, br, "GET")
		if resp.StatusCode != 200 || body != fmt.Sprintf("HTTP/1.1 /p%d ", i) {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	// The access line is written after the response, by the receive loop.
	waitAccessLines(t, &log, n)
	for i := range n {
		if !strings.Contains(log.String(), fmt.Sprintf("path=/p%d status=200 bytes=%d", i, len(fmt.Sprintf("HTTP/1.1 /p%d ", i)))) {
			t.Errorf("no access line for /p%d with its status and size:\n%s", i, log.String())
		}
	}
	// A response that comes back before the goroutine is done sending
	// its request is ended by the goroutine, which a loaded machine
	// makes likelier: most, not all.
	if got := fastEnded(s.in); got < n/2 {
		t.Errorf("the receive loop ended %d of %d requests", got, n)
	} else {
		t.Logf("the receive loop ended %d of %d requests", got, n)
	}
	if got := s.m.opened.Load(); got != 1 {
		t.Errorf("%d streams opened for %d requests one after the other, want 1", got, n)
	}
}

// Responses the tap cannot end (larger than a tap takes, in two frames,
// interim, cut by the backend's close) are handed back to the goroutine
// at once: each arrives long before the response timeout, whole, and the
// connection serves the next request.
func TestDetachedHandedBack(t *testing.T) {
	noLeaks(t)
	big := strings.Repeat("b", mux.MaxTapSize+100)
	backend := answeringBackend(t, func(c net.Conn, r *http.Request) bool {
		switch r.URL.Path {
		case "/big":
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(big), big)
		case "/split":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
			// A pause, so that the head's frame usually leaves alone
			// and the tap, given a head without its body, hands the
			// request back.
			time.Sleep(20 * time.Millisecond)
			io.WriteString(c, "split")
		case "/interim":
			io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ninterim")
		case "/close":
			io.WriteString(c, "HTTP/1.1 200 OK\r\n\r\nuntil the end")
			return false
		default:
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsmall")
		}
		return true
	})
	var log testutil.Buffer
	s := startDetach(t, backend, time.Minute, &log)
	for _, tc := range []struct{ path, body string }{
		{"/big", big}, {"/split", "split"}, {"/interim", "interim"}, {"/close", "until the end"},
	} {
		c, br := dialVisitor(t, s.addr)
		start := time.Now()
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: app.gw.test\r\n\r\n", tc.path)
		if tc.path == "/interim" {
			if resp, _ := readResp(t, br, "GET"); resp.StatusCode != http.StatusEarlyHints {
				t.Fatalf("/interim: %d first; want 103", resp.StatusCode)
			}
		}
		if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != tc.body {
			t.Fatalf("%s: %d, %d bytes", tc.path, resp.StatusCode, len(body))
		}
		if tc.path == "/close" {
			continue // a body ended by the close: the visitor's connection closes too
		}
		io.WriteString(c, "GET /next HTTP/1.1\r\nHost: app.gw.test\r\n\r\n")
		if _, body := readResp(t, br, "GET"); body != "small" {
			t.Fatalf("after %s: %q", tc.path, body)
		}
		// Handed back at once, not at the response timeout (a minute).
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("%s took %v", tc.path, d)
		}
	}
}

// A backend that does not answer: the goroutine takes the request back
// at the response timeout, and the visitor gets 504.
func TestDetachedResponseTimeout(t *testing.T) {
	noLeaks(t)
	backend := rawBackend(t, func(c net.Conn) {
		http.ReadRequest(bufio.NewReader(c))
		io.Copy(io.Discard, c) // and never answer
	})
	var log testutil.Buffer
	s := startDetach(t, backend, 300*time.Millisecond, &log)
	c, br := dialVisitor(t, s.addr)
	io.WriteString(c, "GET /mute HTTP/1.1\r\nHost: app.gw.test\r\n\r\n")
	if resp, _ := readResp(t, br, "GET"); resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("status %d; want 504", resp.StatusCode)
	}
	waitAccessLine(t, &log, "path=/mute status=504")
}

// A visitor that sends its next requests before the response: the
// responses keep their order, and every request is logged once.
func TestDetachedPipelinedOrder(t *testing.T) {
	noLeaks(t)
	var log testutil.Buffer
	s := startDetach(t, httpBackend(t, echoPath), time.Minute, &log)
	c, br := dialVisitor(t, s.addr)
	const n = 50
	var all bytes.Buffer
	for i := range n {
		fmt.Fprintf(&all, "GET /%d HTTP/1.1\r\nHost: app.gw.test\r\n\r\n", i)
	}
	go c.Write(all.Bytes())
	for i := range n {
		if _, body := readResp(t, br, "GET"); body != fmt.Sprintf("HTTP/1.1 /%d ", i) {
			t.Fatalf("response %d: %q", i, body)
		}
	}
	waitAccessLines(t, &log, n)
}

// A visitor that leaves before its response: the request still ends,
// with its access line, and nothing is left behind (noLeaks).
func TestDetachedVisitorLeaves(t *testing.T) {
	noLeaks(t)
	release := make(chan struct{})
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		io.WriteString(w, "late")
	})
	var log testutil.Buffer
	s := startDetach(t, httpBackend(t, slow), time.Minute, &log)
	c, _ := dialVisitor(t, s.addr)
	io.WriteString(c, "GET /gone HTTP/1.1\r\nHost: app.gw.test\r\n\r\n")
	if err := testutil.Poll(5*time.Second, func() error {
		if fastServed(s.in) != 1 {
			return fmt.Errorf("not forwarded yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	close(release)
	waitAccessLine(t, &log, "path=/gone")
}

// A connection left idle after a request the receive loop ended closes
// at the idle timeout from that response, not later by the response
// timeout the wait started with.
func TestDetachedIdleTimeout(t *testing.T) {
	noLeaks(t)
	const idle, response = 2 * time.Second, 1900 * time.Millisecond
	s := startFastConfig(t, httpBackend(t, echoPath), func(c *Config) {
		c.ResponseTimeout = response
		c.IdleTimeout = idle
	})
	c, br := dialVisitor(t, s.addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: app.gw.test\r\n\r\n")
	readResp(t, br, "GET")
	start := time.Now()
	if n, err := br.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("read %d bytes, %v; want the connection closed", n, err)
	}
	if got := fastEnded(s.in); got != 1 {
		t.Fatalf("the receive loop ended %d requests, want 1", got)
	}
	// The wait began bounded by the response timeout; counted again
	// from that, the idle timeout would close it after about 3.9s.
	if d := time.Since(start); d < idle-100*time.Millisecond || d >= idle+response*3/4 {
		t.Fatalf("closed after %v; want about %v", d, idle)
	}
}

// Many visitors at once, over one session's pooled streams, mix
// responses the receive loop ends with ones it hands back, one request at
// a time and pipelined: every response reaches its own visitor, whole and
// in order, and every request has its access line.
func TestDetachedConcurrentMix(t *testing.T) {
	noLeaks(t)
	big := strings.Repeat("b", mux.MaxTapSize+1)
	backend := answeringBackend(t, func(c net.Conn, r *http.Request) bool {
		body := r.URL.Path
		if strings.HasPrefix(body, "/big") {
			body += big
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		return true
	})
	var log testutil.Buffer
	s := startDetach(t, backend, time.Minute, &log)
	const visitors, rounds = 16, 40
	errs := make(chan error, visitors)
	for v := range visitors {
		go func() {
			errs <- func() error {
				c, err := net.Dial("tcp", s.addr)
				if err != nil {
					return err
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				br := bufio.NewReader(c)
				for i := range rounds {
					// Every third round pipelines three requests.
					n := 1
					if i%3 == 2 {
						n = 3
					}
					var paths []string
					var req bytes.Buffer
					for j := range n {
						p := fmt.Sprintf("/v%d-r%d-%d", v, i, j)
						if (v+i+j)%4 == 0 {
							p = "/big" + p
						}
						paths = append(paths, p)
						fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: app.gw.test\r\n\r\n", p)
					}
					if _, err := c.Write(req.Bytes()); err != nil {
						return err
					}
					for _, p := range paths {
						resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
						if err != nil {
							return fmt.Errorf("%s: %v", p, err)
						}
						b, err := io.ReadAll(resp.Body)
						if err != nil {
							return fmt.Errorf("%s: %v", p, err)
						}
						if want := p; !strings.HasPrefix(string(b), want) || strings.HasPrefix(p, "/big") != (len(b) > len(big)) {
							return fmt.Errorf("%s: got %d bytes starting %.40q", p, len(b), b)
						}
					}
				}
				return nil
			}()
		}()
	}
	for range visitors {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// Rounds 2, 5, 8... carry three requests, the others one.
	total := visitors * (rounds + 2*(rounds/3))
	waitAccessLines(t, &log, total)
	t.Logf("%d requests; the receive loop ended %d of them", total, fastEnded(s.in))
}

// The end of a request the receive loop ended does not count towards the
// idle time of a later one the goroutine served: after a slow answer to
// a POST that followed it, the connection serves the next request.
func TestDetachedIdleAfterSlowRequest(t *testing.T) {
	noLeaks(t)
	const idle = time.Second
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			time.Sleep(idle + idle/2) // longer than the idle timeout
		}
		io.WriteString(w, r.URL.Path)
	})
	s := startFastConfig(t, httpBackend(t, slow), func(c *Config) {
		c.ResponseTimeout = time.Minute
		c.IdleTimeout = idle
	})
	c, br := dialVisitor(t, s.addr)
	io.WriteString(c, "GET /first HTTP/1.1\r\nHost: app.gw.test\r\n\r\n")
	readResp(t, br, "GET")
	io.WriteString(c, "POST /slow HTTP/1.1\r\nHost: app.gw.test\r\nContent-Length: 2\r\n\r\nok")
	readResp(t, br, "POST")
	io.WriteString(c, "GET /next HTTP/1.1\r\nHost: app.gw.test\r\n\r\n")
	if _, body := readResp(t, br, "GET"); body != "/next" {
		t.Fatalf("after the slow request: %q", body)
	}
}
