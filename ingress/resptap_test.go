package ingress

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

// scripted answers each request on a backend connection with the
// response named by its path, verbatim; a response in closing ends the
// connection after it.
var scripted = map[string]string{
	"/len":     "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
	"/chunked": "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
	"/head":    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
	"/204":     "HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n",
	"/hop":     "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\nUpgrade: x\r\nContent-Length: 2\r\n\r\nok",
	"/close":   "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
	"/extra":   "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad",
	"/eof":     "HTTP/1.1 200 OK\r\n\r\nto the end",
	"/interim": "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
	"/bare-lf": "HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
	"/split":   "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
}

var closing = map[string]bool{"/close": true, "/extra": true, "/eof": true, "/split": true}

func scriptedBackend(t *testing.T) string {
	return rawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			r, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, r.Body)
			if _, err := io.WriteString(c, scripted[r.URL.Path]); err != nil {
				return
			}
			if r.URL.Path == "/split" {
				// The rest of the body in another frame: the tap
				// must leave it all to the goroutine.
				time.Sleep(20 * time.Millisecond)
				io.WriteString(c, "world")
			}
			if closing[r.URL.Path] {
				return
			}
		}
	})
}

// recording is a reader that keeps what it read.
type recording struct {
	r   io.Reader
	got bytes.Buffer
}

func (r *recording) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.got.Write(p[:n])
	return n, err
}

var dateLine = regexp.MustCompile(`(?m)^Date: [^\r]*\r\n`)

// exchangeRaw sends req on a fresh visitor connection and returns the
// bytes of the response, Date lines blanked, and its body.
func exchangeRaw(t *testing.T, addr, req, method string) (string, string) {
	t.Helper()
	c, _ := dialVisitor(t, addr)
	rec := &recording{r: c}
	br := bufio.NewReader(rec)
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	// Through the final response: readResp stops at an interim one
	// but 100.
	var resp *http.Response
	var err error
	for resp == nil || resp.StatusCode < 200 {
		if resp, err = http.ReadResponse(br, &http.Request{Method: method}); err != nil {
			t.Fatalf("read response: %v", err)
		}
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	body := string(b)
	return dateLine.ReplaceAllString(rec.got.String(), "Date: -\r\n"), body
}

// The receive loop writes the responses it takes exactly as the
// connection's goroutine would have: every scripted response reaches the
// visitor byte for byte the same through streams with a tap (a
// multiplexer's) and without (pipes), and the tap takes the common ones
// only.
func TestTapSameBytes(t *testing.T) {
	noLeaks(t)
	backend := scriptedBackend(t)
	viaTap := startFastWith(t, backend, nil, false)
	viaPipe := startFastWith(t, backend, nil, true)
	cases := []struct {
		path, method, extra string
		tapped              bool
	}{
		{"/len", "GET", "", true},
		{"/len", "GET", "Connection: close\r\n", true},
		{"/chunked", "GET", "", true},
		{"/head", "HEAD", "", true},
		{"/204", "GET", "", true},
		{"/hop", "GET", "", true},
		{"/close", "GET", "", true},
		{"/extra", "GET", "", false},
		{"/eof", "GET", "", false},
		{"/interim", "GET", "", false},
		{"/bare-lf", "GET", "", false},
		{"/split", "GET", "", false}, // unless its two writes came in one frame
	}
	for _, tc := range cases {
		req := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: app.gw.test\r\n%s\r\n", tc.method, tc.path, tc.extra)
		before, _ := fastTapped(viaTap.in)
		got, body := exchangeRaw(t, viaTap.addr, req, tc.method)
		want, wantBody := exchangeRaw(t, viaPipe.addr, req, tc.method)
		if got != want || body != wantBody {
			t.Errorf("%s %s %q: through the tap\n%q\nwithout\n%q", tc.method, tc.path, tc.extra, got, want)
		}
		after, _ := fastTapped(viaTap.in)
		if tapped := after > before; tapped != tc.tapped && tc.path != "/split" {
			t.Errorf("%s %s %q: tapped %v, want %v", tc.method, tc.path, tc.extra, tapped, tc.tapped)
		}
	}
	if n, _ := fastTapped(viaPipe.in); n != 0 {
		t.Errorf("%d responses tapped on pipes, which have no tap", n)
	}
}

// A visitor that does not read: the responses the tap writes fill its
// socket, and what the socket does not take is written by the
// connection's goroutine; all of them arrive, whole and in order. The
// visitor sends each request once the last was tapped, so the goroutine
// is back waiting for the visitor when the tap meets the full socket.
func TestTapSocketFull(t *testing.T) {
	noLeaks(t)
	body := strings.Repeat("x", 3000)
	backend := answeringBackend(t, func(c net.Conn, r *http.Request) bool {
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Path: %s\r\n\r\n%s", len(body), r.URL.Path, body)
		return true
	})
	// Small socket buffers both ways (the visitor's set before it
	// connects), so the gateway's socket fills after a few responses
	// whatever the machine's defaults.
	s := startFastWith(t, backend, nil, false, func(ln net.Listener) net.Listener { return smallSendBuffers{ln} })
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return serr
	}}
	c, err := d.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	const max = 2000
	reqs := make(chan int, max) // the requests written
	stop := make(chan struct{})
	go func() {
		defer close(reqs)
		for i := range max {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := fmt.Fprintf(c, "GET /%d HTTP/1.1\r\nHost: app.gw.test\r\n\r\n", i); err != nil {
				return
			}
			reqs <- i
			err := testutil.Poll(10*time.Second, func() error {
				if tapped, left := fastTapped(s.in); tapped <= int64(i) && left == 0 {
					return fmt.Errorf("response %d not tapped", i)
				}
				return nil
			})
			if err != nil {
				return
			}
		}
	}()
	if err := testutil.Poll(20*time.Second, func() error {
		if _, left := fastTapped(s.in); left == 0 {
			return fmt.Errorf("no response left to the goroutine yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	close(stop)
	// The writer may be blocked on a request until the gateway reads
	// again, which it does once these reads empty its socket.
	br := bufio.NewReader(c)
	n := 0
	for i := range reqs {
		resp, got := readResp(t, br, "GET")
		if p := resp.Header.Get("X-Path"); p != fmt.Sprintf("/%d", i) || got != body {
			t.Fatalf("response %d: for %q, %d bytes of body", i, p, len(got))
		}
		n++
	}
	tapped, left := fastTapped(s.in)
	t.Logf("%d requests: %d responses tapped, %d of them finished by the goroutine", n, tapped, left)
}

// readOne reads p as one response to method with the standard reader,
// and returns its status, its body, and how many bytes of p were left.
func readOne(p []byte, method string) (code int, body []byte, left int, err error) {
	r := bytes.NewReader(p)
	br := bufio.NewReader(r)
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		return 0, nil, 0, err
	}
	body, err = io.ReadAll(resp.Body)
	return resp.StatusCode, body, br.Buffered() + r.Len(), err
}

// FuzzTapResponse: whatever the tap takes, the standard reader reads as
// one whole response, with nothing after it, and what the visitor is
// sent reads the same: the same status and the same body.
func FuzzTapResponse(f *testing.F) {
	for _, s := range scripted {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	for _, s := range respHeadSeeds {
		f.Add([]byte(s), false)
	}
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), true)
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"), false)
	// The visitor's socket: its peer reads and drops what the tap writes.
	a, b := testutil.LoopbackPair(f)
	go io.Copy(io.Discard, b)
	rc, err := a.SyscallConn()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, p []byte, head bool) {
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		fc := &fastConn{fs: &fastServer{}, raw: rc, rawKnown: true}
		fc.tap.method = method
		if !fc.takeResponse(p) {
			return
		}
		tp := &fc.tap
		defer headBufsPut(tp.buf)
		if tp.err != nil {
			t.Fatalf("write to the visitor's socket: %v", tp.err)
		}
		code, body, left, err := readOne(p, method)
		if err != nil || left != 0 {
			t.Fatalf("taken %q, which the standard reader reads with %v, %d bytes left", p, err, left)
		}
		vcode, vbody, vleft, err := readOne(tp.buf, method)
		if err != nil || vleft != 0 || vcode != code || !bytes.Equal(vbody, body) || code != tp.h.code {
			t.Fatalf("backend's %q (%d %q) sent to the visitor as %q (%d %q, %v, %d left)", p, code, body, tp.buf, vcode, vbody, err, vleft)
		}
		if tp.n != int64(len(body)) {
			t.Fatalf("%q: %d bytes of body counted, %d read", p, tp.n, len(body))
		}
	})
}

// smallSendBuffers gives the connections it accepts a small send buffer.
type smallSendBuffers struct{ net.Listener }

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		c.(*net.TCPConn).SetWriteBuffer(4096)
	}
	return c, err
}
