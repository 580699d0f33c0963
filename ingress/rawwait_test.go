//go:build linux

package ingress

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/transport/mux"
)

// keptAlive dials addr and sends a GET for each of paths on the one
// connection, each after the last response.
func keptAlive(t *testing.T, addr string, paths ...string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, br := dialVisitor(t, addr)
	for _, p := range paths {
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: app.gw.test\r\n\r\n", p)
		if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 {
			t.Fatalf("%s: %d %q", p, resp.StatusCode, body)
		}
	}
	return c, br
}

// startBigBackend starts the path with requests left to the tap, before a
// backend that answers /big with a response larger than the tap takes,
// which the tap hands back, and anything else with "small".
func startBigBackend(t *testing.T) (*fastSetup, string) {
	t.Helper()
	big := strings.Repeat("b", mux.MaxTapSize+100)
	backend := answeringBackend(t, func(c net.Conn, r *http.Request) bool {
		if r.URL.Path == "/big" {
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(big), big)
		} else {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsmall")
		}
		return true
	})
	var log testutil.Buffer
	return startDetach(t, backend, time.Minute, &log), big
}

func rawCounts(in *Server) (served, reads int64) {
	return fastSum(in, func(fs *fastServer) int64 { return fs.rawServed.Load() }),
		fastSum(in, func(fs *fastServer) int64 { return fs.rawReads.Load() })
}

// TestRawOneReadPerRequest: after its first request, a keep-alive
// connection's requests are served inside the socket's readiness callback
// with one read each: none finds the socket empty, but the one that
// starts the callback.
func TestRawOneReadPerRequest(t *testing.T) {
	noLeaks(t)
	s := startFast(t, httpBackend(t, echoPath), nil)
	c, br := dialVisitor(t, s.addr)
	const requests = 200
	for i := range requests {
		fmt.Fprintf(c, "GET /r%d HTTP/1.1\r\nHost: app.gw.test\r\n\r\n", i)
		if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != fmt.Sprintf("HTTP/1.1 /r%d ", i) {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	served, reads := rawCounts(s.in)
	if served != requests-1 {
		t.Fatalf("%d requests served in the callback, want %d", served, requests-1)
	}
	// One read per request, and the callback's first one.
	if reads > served+1 {
		t.Fatalf("%d reads for %d requests served in the callback", reads, served)
	}
}

// TestRawLeavesToLoop: what the callback does not serve itself goes back
// to the connection's loop, in order, on one connection: a head in two
// reads, a request with a body, the request after a POST, pipelined
// requests, and a request for the standard server.
func TestRawLeavesToLoop(t *testing.T) {
	noLeaks(t)
	s := startFast(t, httpBackend(t, echoPath), nil)
	c, br := keptAlive(t, s.addr, "/0", "/1")
	expect := func(what, method, want string) {
		t.Helper()
		if resp, body := readResp(t, br, method); resp.StatusCode != 200 || body != want {
			t.Fatalf("%s: %d %q, want %q", what, resp.StatusCode, body, want)
		}
	}
	served, reads := rawCounts(s.in)
	if served != 1 {
		t.Fatalf("%d requests served in the callback, want 1", served)
	}

	// A head in two reads: the second part is sent once the callback
	// read the first.
	io.WriteString(c, "GET /split HTTP/1.1\r\nHo")
	if err := testutil.Poll(5*time.Second, func() error {
		if _, r := rawCounts(s.in); r <= reads {
			return fmt.Errorf("the first part not read yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "st: app.gw.test\r\n\r\n")
	expect("split head", "GET", "HTTP/1.1 /split ")

	// A body, then the request after a POST, then pipelined requests.
	io.WriteString(c, "POST /body HTTP/1.1\r\nHost: app.gw.test\r\nContent-Length: 5\r\n\r\nhello")
	expect("body", "POST", "HTTP/1.1 /body hello")
	io.WriteString(c, "\r\nGET /after HTTP/1.1\r\nHost: app.gw.test\r\n\r\n")
	expect("after a POST", "GET", "HTTP/1.1 /after ")
	var all bytes.Buffer
	for i := range 3 {
		fmt.Fprintf(&all, "GET /p%d HTTP/1.1\r\nHost: app.gw.test\r\n\r\n", i)
	}
	c.Write(all.Bytes())
	for i := range 3 {
		expect("pipelined", "GET", fmt.Sprintf("HTTP/1.1 /p%d ", i))
	}

	// HTTP/1.0 is the standard server's.
	io.WriteString(c, "GET /old HTTP/1.0\r\nHost: app.gw.test\r\nConnection: keep-alive\r\n\r\n")
	expect("handed over", "GET", "HTTP/1.1 /old ") // the reverse proxy speaks HTTP/1.1 to the backend
	if n := fastServed(s.in); n != 8 {
		t.Errorf("%d requests took the forwarding path, want 8", n)
	}
	// The callback served the second request, the POST's head and the
	// three pipelined ones: not the split head, nor the one after the POST.
	if served, _ := rawCounts(s.in); served != 5 {
		t.Errorf("%d requests served in the callback, want 5", served)
	}
}

// TestRawGuardRefuses: a smuggling attempt read inside the callback is
// refused as on the first request: 400, and the connection closed, with
// nothing after it forwarded.
func TestRawGuardRefuses(t *testing.T) {
	noLeaks(t)
	s := startFast(t, httpBackend(t, echoPath), nil)
	c, br := keptAlive(t, s.addr, "/1", "/2")
	smuggled := "GET /smuggled HTTP/1.1\r\nHost: app.gw.test\r\n\r\n"
	fmt.Fprintf(c, "POST /b HTTP/1.1\r\nHost: app.gw.test\r\nTransfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n0\r\n\r\n%s", len(smuggled)+5, smuggled)
	resp, _ := readResp(t, br, "POST")
	if resp.StatusCode != http.StatusBadRequest || !resp.Close {
		t.Fatalf("%d close=%v, want 400 and the connection closed", resp.StatusCode, resp.Close)
	}
	if rest, err := io.ReadAll(br); err != nil || strings.Contains(string(rest), "smuggled") {
		t.Fatalf("after the refusal: %q, %v", rest, err)
	}
	if served, _ := rawCounts(s.in); served != 1 {
		t.Errorf("%d requests served in the callback, want 1", served)
	}
}

// waitsForBig reports whether fc's callback is about to wait for the
// response to /big, a request left to the tap.
func waitsForBig(fc *fastConn) bool {
	return fc.pstate.Load() != pOff && fc.cur.r.URL.Path == "/big"
}

// TestRawHandedBackBeforeWait: a request the tap hands back before the
// callback arms its wait (the wait's deadline then replaces the tap's
// interruption) is still taken back at once, not at the response
// timeout.
func TestRawHandedBackBeforeWait(t *testing.T) {
	noLeaks(t)
	s, big := startBigBackend(t)
	var held atomic.Int64
	s.in.testHookRawWait = func(fc *fastConn) {
		if !waitsForBig(fc) {
			return
		}
		// Hold the wait until the tap handed the request back.
		if err := testutil.Poll(10*time.Second, func() error {
			if !fc.handedBack() {
				return fmt.Errorf("not handed back")
			}
			return nil
		}); err == nil {
			held.Add(1)
		}
	}
	c, br := dialVisitor(t, s.addr)
	start := time.Now()
	for _, path := range []string{"/first", "/big", "/next"} {
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: app.gw.test\r\n\r\n", path)
		want := "small"
		if path == "/big" {
			want = big
		}
		if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != want {
			t.Fatalf("%s: %d, %d bytes", path, resp.StatusCode, len(body))
		}
	}
	if held.Load() == 0 {
		t.Fatal("no wait was held until the hand-back")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("took %v: the request was taken back at the response timeout", d)
	}
}

// TestRawHalfClose: a visitor that sends a request and half-closes, the
// FIN read inside the callback, gets the response, then the connection
// closes.
func TestRawHalfClose(t *testing.T) {
	noLeaks(t)
	s := startFast(t, httpBackend(t, echoPath), nil)
	c, br := keptAlive(t, s.addr, "/1")
	io.WriteString(c, "GET /2 HTTP/1.1\r\nHost: app.gw.test\r\n\r\n")
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != "HTTP/1.1 /2 " {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Fatalf("after the response: %q, %v; want the connection closed", rest, err)
	}
	if served, _ := rawCounts(s.in); served != 1 {
		t.Errorf("%d requests served in the callback, want 1", served)
	}
}

// TestRawHandBackRacesWait: the tap hands a request back between the
// callback's arming of its wait and its look at the state. The tap has
// set its interrupting deadline, which the callback's then replaced, but
// not yet said so. The callback asks under the tap's lock, so it sees
// the hand-back once the tap is done and takes the request back at once.
// Read without the lock, the state still said the request was the tap's,
// and the wait missed the interruption until the response timeout
// (checked).
func TestRawHandBackRacesWait(t *testing.T) {
	noLeaks(t)
	s, big := startBigBackend(t)
	interrupting := make(chan struct{})
	var once sync.Once
	var waited atomic.Bool
	// The callback arms its wait only once the tap has set its deadline.
	s.in.testHookRawWait = func(fc *fastConn) {
		if !waitsForBig(fc) {
			return
		}
		select {
		case <-interrupting:
			waited.Store(true)
		case <-time.After(10 * time.Second):
		}
	}
	// The tap says so only after the callback had the time to look at the
	// state and wait: a read of the callback shows it went to wait; with
	// the lock, it cannot look, and the tap goes on after half a second.
	s.in.testHookLeave = func(fc *fastConn) {
		if fc.cur.r.URL.Path != "/big" {
			return
		}
		_, reads := rawCounts(s.in)
		once.Do(func() { close(interrupting) })
		testutil.Poll(500*time.Millisecond, func() error {
			if _, r := rawCounts(s.in); r == reads {
				return fmt.Errorf("the callback did not read")
			}
			return nil
		})
	}
	c, br := keptAlive(t, s.addr, "/first")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /big HTTP/1.1\r\nHost: app.gw.test\r\n\r\n")
	if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != big {
		t.Fatalf("/big: %d, %d bytes", resp.StatusCode, len(body))
	}
	if !waited.Load() {
		t.Fatal("the callback armed its wait before the tap set its deadline")
	}
}
