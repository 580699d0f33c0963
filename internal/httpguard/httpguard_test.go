package httpguard

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/textproto"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	get     = "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	postLen = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
	// fake is a header block with both framings, for hiding in bodies.
	fake = "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
)

func chunkedPost(chunks string) string {
	return "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
}

func withHeader(field string) string {
	return "POST / HTTP/1.1\r\nHost: x\r\n" + field + "\r\n\r\n"
}

// outcome is what a scanner reports after a stream.
type outcome struct {
	headers int // header blocks seen to their end
	visible int // requests numbered for the handler
	flag    error
	flagAt  int
	mode    string // scanning, stopped or flagged
}

func outcomeOf(s *scanner) outcome {
	o := outcome{headers: s.headers, visible: s.visible, flag: s.flagErr, flagAt: s.flagAt, mode: "scanning"}
	switch s.state {
	case stStopped:
		o.mode = "stopped"
	case stFlagged:
		o.mode = "flagged"
	}
	return o
}

func scanning(headers, visible int) outcome {
	return outcome{headers: headers, visible: visible, mode: "scanning"}
}

func stopped(headers, visible int) outcome {
	return outcome{headers: headers, visible: visible, mode: "stopped"}
}

func flagged(headers, visible int, err error) outcome {
	return outcome{headers: headers, visible: visible, flag: err, flagAt: visible, mode: "flagged"}
}

var scannerCases = []struct {
	name string
	in   string
	want outcome
}{
	{"get", get, scanning(1, 1)},
	{"get with bare LF", "GET / HTTP/1.1\nHost: x\n\n", scanning(1, 1)},
	{"incomplete", "GET / HTTP/1.1\r\nHost", scanning(0, 0)},
	{"length body then get", postLen + get, scanning(2, 2)},
	{"length with blanks", "POST / HTTP/1.1\r\nContent-Length: \t 5 \t\r\n\r\nhello" + get, scanning(2, 2)},
	{"length zero", withHeader("Content-Length: 0") + get, scanning(2, 2)},
	{"length body hides both framings",
		fmt.Sprintf("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(fake), fake) + get,
		scanning(2, 2)},
	{"chunked then get", chunkedPost("5\r\nhello\r\n0\r\n\r\n") + get, scanning(2, 2)},
	{"chunked body hides both framings",
		chunkedPost(fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(fake), fake)) + get, scanning(2, 2)},
	{"chunk extensions and blanks",
		chunkedPost("5;name=value\r\nhello\r\nA \t\r\n0123456789\r\n5; x \t\r\nhello\r\n0;last\r\n\r\n") + get,
		scanning(2, 2)},
	{"chunk size of 16 digits", chunkedPost("0000000000000005\r\nhello\r\n0\r\n\r\n") + get, scanning(2, 2)},
	{"chunked with trailer", chunkedPost("1\r\nx\r\n0\r\nX-Sum: 1\r\nY: 2\r\n\r\n") + get, scanning(2, 2)},
	{"chunked in capitals", "POST / HTTP/1.1\r\nTRANSFER-ENCODING: \tChunKed \r\n\r\n0\r\n\r\n" + get, scanning(2, 2)},
	{"names that only look alike",
		withHeader("Content-Lengthy: 5\r\nContent-Lengt: 5\r\nTransfer-Encodings: x\r\nX-Content-Length: 9") + get,
		scanning(2, 2)},
	{"long field value", withHeader("Cookie: "+strings.Repeat("a", 100<<10)) + get, scanning(2, 2)},

	{"length and chunked", withHeader("Content-Length: 5\r\nTransfer-Encoding: chunked"),
		flagged(1, 0, ErrContentLengthAndChunked)},
	{"chunked and length", withHeader("Transfer-Encoding: chunked\r\nContent-Length: 5"),
		flagged(1, 0, ErrContentLengthAndChunked)},
	{"length and chunked in other cases", withHeader("content-length: 5\r\ntransfer-encoding: CHUNKED"),
		flagged(1, 0, ErrContentLengthAndChunked)},
	{"length and another coding", withHeader("Content-Length: 5\r\nTransfer-Encoding: gzip"),
		flagged(1, 0, ErrContentLengthAndChunked)},
	{"length and chunked with bare LF", "POST / HTTP/1.1\nContent-Length: 5\nTransfer-Encoding: chunked\n\n",
		flagged(1, 0, ErrContentLengthAndChunked)},
	{"length and chunked after a long field",
		withHeader("Cookie: " + strings.Repeat("a", 100<<10) + "\r\nContent-Length: 5\r\nTransfer-Encoding: chunked"),
		flagged(1, 0, ErrContentLengthAndChunked)},
	{"length twice, same value", withHeader("Content-Length: 5\r\nContent-Length: 5"),
		flagged(1, 0, ErrDuplicateContentLength)},
	{"length twice, other value", withHeader("Content-Length: 5\r\nContent-Length: 6"),
		flagged(1, 0, ErrDuplicateContentLength)},
	{"length with sign", withHeader("Content-Length: +5"), flagged(1, 0, ErrBadContentLength)},
	{"length in hex", withHeader("Content-Length: 0x5"), flagged(1, 0, ErrBadContentLength)},
	{"length with letter", withHeader("Content-Length: 5a"), flagged(1, 0, ErrBadContentLength)},
	{"length list", withHeader("Content-Length: 5, 5"), flagged(1, 0, ErrBadContentLength)},
	{"length two numbers", withHeader("Content-Length: 5 5"), flagged(1, 0, ErrBadContentLength)},
	{"length empty", withHeader("Content-Length: "), flagged(1, 0, ErrBadContentLength)},
	{"length beyond 63 bits", withHeader("Content-Length: 9223372036854775808"), flagged(1, 0, ErrBadContentLength)},
	{"coding twice", withHeader("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"),
		flagged(1, 0, ErrBadTransferEncoding)},
	{"coding list", withHeader("Transfer-Encoding: gzip, chunked"), flagged(1, 0, ErrBadTransferEncoding)},
	{"coding misspelt", withHeader("Transfer-Encoding: chunke"), flagged(1, 0, ErrBadTransferEncoding)},
	{"coding empty", withHeader("Transfer-Encoding:"), flagged(1, 0, ErrBadTransferEncoding)},
	{"coding on HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
		flagged(1, 0, ErrBadTransferEncoding)},
	{"folded line", "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n", flagged(1, 0, ErrLineFolding)},
	{"folded first line", "GET / HTTP/1.1\r\n\tHost: x\r\n\r\n", flagged(1, 0, ErrLineFolding)},
	{"folded coding", withHeader("Transfer-Encoding:\r\n chunked"), flagged(1, 0, ErrLineFolding)},

	{"pipelined good, good, bad", get + postLen + withHeader("Content-Length: 1\r\nTransfer-Encoding: chunked"),
		flagged(3, 2, ErrContentLengthAndChunked)},
	{"nothing after a refusal", withHeader("Content-Length: 1\r\nTransfer-Encoding: chunked") + "0\r\n\r\n" + get,
		flagged(1, 0, ErrContentLengthAndChunked)},
	{"OPTIONS * is not numbered",
		"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n" + get + withHeader("Content-Length: 1\r\nTransfer-Encoding: chunked"),
		flagged(3, 1, ErrContentLengthAndChunked)},
	{"refused OPTIONS * refuses the next request",
		"OPTIONS * HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
		flagged(1, 0, ErrContentLengthAndChunked)},
	{"OPTIONS with a path is numbered", "OPTIONS /a HTTP/1.1\r\nHost: x\r\n\r\n" + get, scanning(2, 2)},
	{"up to four CR or LF after a POST", postLen + "\r\n\r\n" + get, scanning(2, 2)},
	{"five CR or LF after a POST", postLen + "\r\n\r\n\n" + get, stopped(1, 1)},
	{"CRLF after a GET", get + "\r\n" + get, stopped(1, 1)},
	{"refused upgrade, then more",
		"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n" +
			withHeader("Content-Length: 1\r\nTransfer-Encoding: chunked"),
		flagged(2, 1, ErrContentLengthAndChunked)},
	{"refused CONNECT, then more",
		"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n" + withHeader("Content-Length: 1\r\nTransfer-Encoding: chunked"),
		flagged(2, 1, ErrContentLengthAndChunked)},
	{"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + withHeader("Content-Length: 1\r\nTransfer-Encoding: chunked"),
		stopped(1, 1)},

	{"chunk size not hex", chunkedPost("zz\r\n"), stopped(1, 1)},
	{"chunk size empty", chunkedPost("\r\n"), stopped(1, 1)},
	{"chunk size with bare LF", chunkedPost("5\nhello\r\n0\r\n\r\n"), stopped(1, 1)},
	{"chunk size with blank before extension", chunkedPost("5 ;x\r\nhello\r\n0\r\n\r\n"), stopped(1, 1)},
	{"chunk size with leading blank", chunkedPost(" 5\r\nhello\r\n0\r\n\r\n"), stopped(1, 1)},
	{"chunk size with CR inside", chunkedPost("5;a\rb\r\nhello\r\n0\r\n\r\n"), stopped(1, 1)},
	{"chunk size of 17 digits", chunkedPost("00000000000000005\r\nhello\r\n0\r\n\r\n"), stopped(1, 1)},
	{"chunk size line too long", chunkedPost("5;" + strings.Repeat("a", maxChunkLine) + "\r\nhello\r\n0\r\n\r\n"), stopped(1, 1)},
	{"chunk data too long", chunkedPost("5\r\nhelloX\r\n0\r\n\r\n"), stopped(1, 1)},
	{"chunk data with bare LF", chunkedPost("5\r\nhello\n0\r\n\r\n"), stopped(1, 1)},
	{"trailer with bare LF", chunkedPost("0\r\nX: 1\n\r\n") + get, stopped(1, 1)},
	{"trailer end with bare LF", chunkedPost("0\r\n\n") + get, stopped(1, 1)},
	{"trailer folded", chunkedPost("0\r\nX: 1\r\n 2\r\n\r\n") + get, stopped(1, 1)},
	{"trailer too long", chunkedPost("0\r\nX: "+strings.Repeat("a", maxTrailer)+"\r\n\r\n") + get, stopped(1, 1)},
	{"request line without version", "GET /\r\n\r\n", stopped(0, 0)},
	{"request line empty", "\r\n" + get, stopped(0, 0)},
	{"field without colon", "GET / HTTP/1.1\r\nHost x\r\n\r\n", stopped(0, 0)},
	{"field with empty name", "GET / HTTP/1.1\r\n: x\r\n\r\n", stopped(0, 0)},
	{"field starting with CR", "GET / HTTP/1.1\r\n\rX: 1\r\n\r\n", stopped(0, 0)},
}

// feedChunks scans data in random chunks.
func feedChunks(data []byte, seed uint64) scanner {
	rng := rand.New(rand.NewPCG(seed, uint64(len(data))))
	var s scanner
	for rest := data; len(rest) > 0; {
		n := 1 + rng.IntN(min(len(rest), 64))
		s.scan(rest[:n])
		rest = rest[n:]
	}
	return s
}

// checkSplits fails t unless the scanner ends in the same state however
// data is cut into reads.
func checkSplits(t *testing.T, data []byte) scanner {
	t.Helper()
	var whole scanner
	whole.scan(data)
	var bytewise scanner
	for i := range data {
		bytewise.scan(data[i : i+1])
	}
	if bytewise != whole {
		t.Fatalf("byte by byte: %+v, want %+v", outcomeOf(&bytewise), outcomeOf(&whole))
	}
	for seed := range uint64(8) {
		if s := feedChunks(data, seed); s != whole {
			t.Fatalf("random chunks (seed %d): %+v, want %+v", seed, outcomeOf(&s), outcomeOf(&whole))
		}
	}
	return whole
}

func TestScanner(t *testing.T) {
	for _, tc := range scannerCases {
		t.Run(tc.name, func(t *testing.T) {
			data := []byte(tc.in)
			s := checkSplits(t, data)
			if got := outcomeOf(&s); got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			if len(data) > 4096 {
				return // the splits below are quadratic
			}
			for i := range data {
				var split scanner
				split.scan(data[:i])
				split.scan(data[i:])
				if split != s {
					t.Fatalf("split at %d: %+v, want %+v", i, outcomeOf(&split), tc.want)
				}
			}
		})
	}
}

func TestScannerStates(t *testing.T) {
	// The bodies are followed to their end: the next request line is
	// awaited, with CR or LF to drop after a POST.
	var s scanner
	s.scan([]byte(chunkedPost("5\r\nhello\r\n0\r\n\r\n")))
	if s.state != stStart || s.skip != skipAfterPOST {
		t.Fatalf("after a chunked POST: state %d, skip %d", s.state, s.skip)
	}
	s = scanner{}
	s.scan([]byte(postLen[:len(postLen)-1]))
	if s.state != stBody || s.remaining != 1 {
		t.Fatalf("one byte before the end of a body: state %d, remaining %d", s.state, s.remaining)
	}
}

func TestScannerDoesNotAllocate(t *testing.T) {
	for _, tc := range scannerCases {
		data := []byte(tc.in)
		if n := testing.AllocsPerRun(10, func() {
			var s scanner
			s.scan(data)
		}); n != 0 {
			t.Errorf("%s: %v allocations per scan", tc.name, n)
		}
	}
}

// pipeConn returns a Conn reading data, which a goroutine writes; the
// goroutine ends when the test does.
func pipeConn(t *testing.T, data string) *Conn {
	a, b := net.Pipe()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.WriteString(b, data)
		b.Close()
	}()
	t.Cleanup(func() {
		a.Close()
		wg.Wait()
	})
	return Wrap(a)
}

func TestConnVerdicts(t *testing.T) {
	c := pipeConn(t, get+postLen+withHeader("Content-Length: 1\r\nTransfer-Encoding: chunked")+"0\r\n\r\n"+get)
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatal(err)
	}
	if err := c.Check(2); !errors.Is(err, ErrContentLengthAndChunked) || !errors.Is(err, ErrSmuggling) {
		t.Fatalf("Check(2) = %v", err)
	}
	for i, want := range []error{nil, nil, ErrContentLengthAndChunked, ErrContentLengthAndChunked} {
		if err := c.Next(); !errors.Is(err, want) || (want == nil) != (err == nil) {
			t.Fatalf("request %d: Next() = %v, want %v", i, err, want)
		}
	}
	if err := c.Check(-1); err != nil {
		t.Fatalf("Check(-1) = %v", err)
	}
}

func TestConnStopsWhenOutOfStep(t *testing.T) {
	// A request the scanner has not seen end cannot be the next one: the
	// scanner gives up rather than answer for the wrong request.
	c := pipeConn(t, get)
	io.Copy(io.Discard, c)
	if err := c.Next(); err != nil {
		t.Fatal(err)
	}
	if err := c.Next(); err != nil {
		t.Fatal(err)
	}
	if !c.stopped.Load() {
		t.Fatal("scanner still running after a request it did not see")
	}
}

func TestConnConcurrent(t *testing.T) {
	// Reads on one goroutine, verdicts on another, for the race detector.
	var stream strings.Builder
	for range 200 {
		stream.WriteString(postLen)
	}
	stream.WriteString(withHeader("Content-Length: 1\r\nTransfer-Encoding: chunked"))
	c := pipeConn(t, stream.String())
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 7)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	}()
	for i := 0; i < 200; i++ {
		if err := c.Check(i); err != nil {
			t.Fatalf("Check(%d) = %v", i, err)
		}
	}
	<-done
	if err := c.Check(200); !errors.Is(err, ErrContentLengthAndChunked) {
		t.Fatalf("Check(200) = %v", err)
	}
}

func TestCloseWrite(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ln = NewListener(ln)
	dialed := make(chan net.Conn, 1)
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Error(err)
		}
		dialed <- c
	}()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	cc := <-dialed
	if cc == nil {
		t.FailNow()
	}
	defer cc.Close()
	g, ok := sc.(*Conn)
	if !ok {
		t.Fatalf("accepted %T, want *Conn", sc)
	}
	if err := g.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	cc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := cc.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("peer read after CloseWrite: %d, %v; want EOF", n, err)
	}

	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if err := Wrap(a).CloseWrite(); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("CloseWrite on a pipe: %v", err)
	}
}

func TestContext(t *testing.T) {
	if _, ok := FromContext(context.Background()); ok {
		t.Fatal("FromContext found a Conn in an empty context")
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := Wrap(a)
	if got, ok := FromContext(ContextWithConn(context.Background(), c)); !ok || got != c {
		t.Fatalf("FromContext = %p, %v; want %p", got, ok, c)
	}
}

// guarded is the handler of the end-to-end test: it refuses as the gateway
// does, and otherwise answers with the length of the body.
func guarded(w http.ResponseWriter, r *http.Request) {
	refuse := func() {
		w.Header().Set("Connection", "close")
		http.Error(w, "malformed request", http.StatusBadRequest)
	}
	c, ok := FromContext(r.Context())
	if !ok {
		http.Error(w, "no guard", http.StatusInternalServerError)
		return
	}
	if c.Next() != nil {
		refuse()
		return
	}
	n, err := io.Copy(io.Discard, r.Body)
	if err != nil {
		refuse()
		return
	}
	fmt.Fprint(w, n)
}

type response struct {
	status int
	body   string // checked when not empty
}

func TestServer(t *testing.T) {
	base := runtime.NumGoroutine()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(guarded),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if g, ok := c.(*Conn); ok {
				ctx = ContextWithConn(ctx, g)
			}
			return ctx
		},
		ReadHeaderTimeout: 10 * time.Second,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(NewListener(ln)) }()

	bad := response{http.StatusBadRequest, ""}
	ok := func(body string) response { return response{http.StatusOK, body} }
	hidden := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(fake), fake)
	tests := []struct {
		name string
		send string
		want []response
	}{
		{"get", get, []response{ok("0")}},
		{"post with length", postLen, []response{ok("5")}},
		{"chunked post", chunkedPost("5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-T: 1\r\n\r\n"), []response{ok("11")}},
		{"pipelined good, good, bad",
			get + postLen + withHeader("Content-Length: 5\r\nTransfer-Encoding: chunked") + "0\r\n\r\n",
			[]response{ok("0"), ok("5"), bad}},
		{"length and chunked", withHeader("Content-Length: 5\r\nTransfer-Encoding: chunked") + "0\r\n\r\n",
			[]response{bad}},
		{"length and chunked in other cases", withHeader("content-length: 5\r\ntransfer-encoding: CHUNKED") + "0\r\n\r\n",
			[]response{bad}},
		{"chunked then length", withHeader("Transfer-Encoding: chunked\r\nContent-Length: 5") + "0\r\n\r\n",
			[]response{bad}},
		{"length twice, same value", withHeader("Content-Length: 5\r\nContent-Length: 5") + "hello",
			[]response{bad}},
		{"coding on HTTP/1.0", "POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
			[]response{bad}},
		{"folded line", "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n", []response{bad}},
		{"keep-alive past a chunked body hiding both framings",
			chunkedPost(hidden) + get + postLen,
			[]response{ok(fmt.Sprint(len(fake))), ok("0"), ok("5")}},
		{"keep-alive past a length body hiding both framings",
			fmt.Sprintf("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(fake), fake) + get,
			[]response{ok(fmt.Sprint(len(fake))), ok("0")}},
		{"OPTIONS * answered by the server is not numbered",
			"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n" + get + withHeader("Content-Length: 5\r\nTransfer-Encoding: chunked") + "0\r\n\r\n",
			[]response{ok(""), ok("0"), bad}},
		{"refused upgrade, then both framings",
			"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n" +
				withHeader("Content-Length: 5\r\nTransfer-Encoding: chunked") + "0\r\n\r\n",
			[]response{ok("0"), bad}},
		{"bad chunk size, refused by the handler", chunkedPost("zz\r\nhello\r\n0\r\n\r\n"), []response{bad}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(c, tc.send); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			for i, want := range tc.want {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("response %d: %v", i, err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					t.Fatalf("response %d: %v", i, err)
				}
				if resp.StatusCode != want.status || want.body != "" && string(body) != want.body {
					t.Fatalf("response %d: %d %q, want %d %q", i, resp.StatusCode, body, want.status, want.body)
				}
			}
			if tc.want[len(tc.want)-1].status == http.StatusBadRequest {
				// A refusal closes the connection.
				if b, err := br.ReadByte(); err == nil {
					t.Fatalf("read %q after a refusal, want the connection closed", b)
				}
			}
		})
	}

	srv.Close()
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines, %d before the test", runtime.NumGoroutine(), base)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// feeder hands a bufio.Reader the bytes of r, scanning each one as it is
// read, and records where the scanner saw each header block end.
type feeder struct {
	r       io.Reader
	s       scanner
	off     int
	ends    []int // offsets just past the header blocks
	flagged int   // index in ends of the refused request, or -1
}

func (f *feeder) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	for i := range n {
		h := f.s.headers
		f.s.scan(p[i : i+1])
		f.off++
		if f.s.headers != h {
			f.ends = append(f.ends, f.off)
			if f.s.flagErr != nil {
				f.flagged = len(f.ends) - 1
			}
		}
	}
	return n, err
}

// compareWithServer reads data as net/http's HTTP/1 server does (request
// after request, with its read buffer size, dropping CR or LF after a POST,
// reading each body to its end) and fails t where the scanner saw a header
// block end elsewhere, or decided differently from what net/textproto
// reads of that block.
func compareWithServer(t *testing.T, data []byte) {
	f := &feeder{r: bytes.NewReader(data), flagged: -1}
	br := bufio.NewReaderSize(f, 4096)
	lastPOST := false
	for i := 0; ; i++ {
		if lastPOST {
			peek, _ := br.Peek(4)
			n := 0
			for n < len(peek) && (peek[n] == '\r' || peek[n] == '\n') {
				n++
			}
			br.Discard(n)
		}
		start := f.off - br.Buffered()
		req, err := http.ReadRequest(br)
		if err != nil {
			return // the server answers 400 and closes
		}
		if req.ProtoMajor != 1 && !(req.ProtoMajor == 2 && req.ProtoMinor == 0 && req.Method == "PRI" && req.RequestURI == "*") {
			return // the server answers 505 and closes
		}
		end := f.off - br.Buffered()
		switch {
		case i < len(f.ends):
			if f.ends[i] != end {
				t.Fatalf("request %d: header block ends at %d, scanner says %d", i, end, f.ends[i])
			}
		case f.s.active():
			t.Fatalf("request %d: header block ends at %d, scanner still scanning at %d", i, end, f.off)
		default:
			return // the scanner stopped before
		}
		want := expectedVerdict(t, data[start:end], req)
		var got error
		if i == f.flagged {
			got = f.s.flagErr
		}
		if got != want {
			t.Fatalf("request %d: scanner says %v, want %v", i, got, want)
		}
		if got != nil || req.Method == "PRI" {
			return
		}
		lastPOST = req.Method == "POST"
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return // the server closes
		}
	}
}

// expectedVerdict decides from block, a header block net/http accepted,
// what the scanner should refuse it for.
func expectedVerdict(t *testing.T, block []byte, req *http.Request) error {
	tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(block)))
	if _, err := tp.ReadLine(); err != nil {
		t.Fatal(err)
	}
	h, err := tp.ReadMIMEHeader()
	if err != nil {
		t.Fatalf("net/textproto fails on a block net/http accepted: %v", err)
	}
	cl, te := h["Content-Length"], h["Transfer-Encoding"]
	switch {
	case bytes.Contains(block, []byte("\n ")) || bytes.Contains(block, []byte("\n\t")):
		return ErrLineFolding
	case len(cl) > 0 && len(te) > 0:
		return ErrContentLengthAndChunked
	case len(cl) > 1:
		return ErrDuplicateContentLength
	case len(cl) == 1 && strings.Trim(cl[0], "0123456789") != "":
		return ErrBadContentLength
	case len(te) > 1, len(te) == 1 && !strings.EqualFold(te[0], "chunked"), len(te) == 1 && !req.ProtoAtLeast(1, 1):
		return ErrBadTransferEncoding
	}
	return nil
}

func TestScannerAgreesWithServer(t *testing.T) {
	for _, tc := range scannerCases {
		t.Run(tc.name, func(t *testing.T) { compareWithServer(t, []byte(tc.in)) })
	}
}

func FuzzScanner(f *testing.F) {
	for _, tc := range scannerCases {
		if len(tc.in) < 8<<10 {
			f.Add([]byte(tc.in))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkSplits(t, data)
		// Memory stays the fixed size of a scanner: nothing is allocated.
		if n := testing.AllocsPerRun(2, func() {
			var s scanner
			s.scan(data)
		}); n != 0 {
			t.Fatalf("%v allocations per scan", n)
		}
		compareWithServer(t, data)
	})
}
