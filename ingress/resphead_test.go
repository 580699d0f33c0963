package ingress

import (
	"bufio"
	"bytes"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// stdHead is what the standard path makes of a response head: the same
// summary scanResponseHead returns, and the visitor's head.
func stdHead(t *testing.T, in []byte, method string) (respHead, http.Header, int, error) {
	br := bufio.NewReaderSize(bytes.NewReader(in), 4<<10)
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		return respHead{}, nil, 0, err
	}
	h := respHead{code: resp.StatusCode, length: resp.ContentLength, close: resp.Close || !resp.ProtoAtLeast(1, 1)}
	bodyless := bodylessResponse(method, resp.StatusCode)
	h.chunked = !bodyless && len(resp.TransferEncoding) > 0
	if bodyless || h.chunked {
		h.length = 0
	}
	removeHopHeaders(resp.Header)
	return h, resp.Header, len(in) - br.Buffered(), nil
}

// checkScan runs scanResponseHead on in; when it takes the head, the
// standard reader must read the same head the same way: same length,
// status, framing and wish to close, and the same fields for the visitor
// (Date aside, which either path adds).
func checkScan(t *testing.T, in []byte, method string) bool {
	t.Helper()
	br := bufio.NewReaderSize(bytes.NewReader(in), 4<<10)
	h, b, ok, err := scanResponseHead(br, method, nil)
	if !ok {
		if n := br.Buffered(); err == nil && n != min(len(in), br.Size()) {
			t.Fatalf("%q: not taken, yet %d bytes consumed", in, min(len(in), br.Size())-n)
		}
		return false
	}
	consumed := len(in) - br.Buffered()
	want, wantHeader, wantConsumed, err := stdHead(t, in, method)
	if err != nil {
		t.Fatalf("%q: taken, but the standard reader refuses it: %v", in, err)
	}
	if h.chunked {
		h.length = 0
	}
	if h != want || consumed != wantConsumed {
		t.Fatalf("%q: read as %+v (%d bytes), the standard reader reads %+v (%d bytes)", in, h, consumed, want, wantConsumed)
	}
	// The visitor's head, read back by the standard reader.
	out := append(b, "\r\n"...)
	back, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(out)), &http.Request{Method: http.MethodHead})
	if err != nil {
		t.Fatalf("%q: the head written for the visitor does not parse: %v\n%q", in, err, out)
	}
	if back.StatusCode != want.code {
		t.Fatalf("%q: visitor's status %d, want %d", in, back.StatusCode, want.code)
	}
	got := back.Header.Clone()
	delete(got, "Date")
	delete(got, "Transfer-Encoding")
	if h.chunked != slices.Equal(back.TransferEncoding, []string{"chunked"}) {
		t.Fatalf("%q: visitor's transfer encoding %v, chunked %t", in, back.TransferEncoding, h.chunked)
	}
	if _, ok := back.Header["Date"]; !ok {
		t.Fatalf("%q: no Date for the visitor:\n%q", in, out)
	}
	if d, ok := wantHeader["Date"]; ok && !slices.Equal(back.Header["Date"], d) {
		t.Fatalf("%q: the backend's Date %q became %q", in, d, back.Header["Date"])
	}
	delete(wantHeader, "Date")
	if !maps.EqualFunc(got, wantHeader, slices.Equal) {
		t.Fatalf("%q: visitor's fields\n%v\nwant\n%v", in, got, wantHeader)
	}
	return true
}

var respHeadSeeds = []string{
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
	"HTTP/1.1 204 No Content\r\nDate: Mon, 02 Jan 2006 15:04:05 GMT\r\n\r\n",
	"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\nETag: \"x\"\r\n\r\n",
	"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
	"HTTP/1.1 200 OK\r\nconnection: Keep-Alive, close\r\nkeep-alive: timeout=5\r\ncontent-length: 0\r\n\r\n",
	"HTTP/1.1 404\r\nContent-Length: 0\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Empty:\r\nX-Tab:\tv\t\r\n\r\n",
	"HTTP/1.1 500 Internal Server Error\r\nUpgrade: h2c\r\nTe: trailers\r\nProxy-Authenticate: Basic\r\nContent-Length: 3\r\n\r\nerr",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Sum: 1\r\n\r\n",
	"HTTP/1.1 200 OK\r\nConnection: X-Private\r\nX-Private: 1\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",
	"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi",
	"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
	"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
	"HTTP/1.1 2000 OK\r\n\r\n",
	"HTTP/1.1 099 Low\r\n\r\n",
	"HTTP/1.1 200OK\r\n\r\n",
	"\r\n",
}

// FuzzResponseHead: whatever the fast reader takes, the standard reader
// takes the same way, and what the visitor is sent says the same.
func FuzzResponseHead(f *testing.F) {
	for _, s := range respHeadSeeds {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, in []byte, head bool) {
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		checkScan(t, in, method)
	})
}

// The seeds, with what each must do: the common heads are taken, the
// unusual ones left to the standard reader untouched.
func TestScanResponseHead(t *testing.T) {
	taken := 0
	for i, s := range respHeadSeeds {
		ok := checkScan(t, []byte(s), http.MethodGet)
		if want := i < 8; ok != want {
			t.Errorf("%q: taken %t, want %t", s, ok, want)
		}
		if ok {
			taken++
		}
	}
	// Hop-by-hop fields do not reach the visitor; the backend's others do,
	// as they came.
	br := bufio.NewReader(strings.NewReader(respHeadSeeds[7]))
	_, b, ok, _ := scanResponseHead(br, http.MethodGet, nil)
	if !ok || bytes.Contains(b, []byte("Upgrade")) || bytes.Contains(b, []byte("Te:")) || bytes.Contains(b, []byte("Proxy-")) || !bytes.Contains(b, []byte("Content-Length: 3\r\n")) {
		t.Fatalf("visitor's head %q", b)
	}
	if rest, _ := io.ReadAll(br); string(rest) != "err" {
		t.Fatalf("body after the head %q", rest)
	}
	// A head that does not fit the stream's buffer is left whole.
	long := "HTTP/1.1 200 OK\r\nX-Long: " + strings.Repeat("a", 5000) + "\r\nContent-Length: 0\r\n\r\n"
	if checkScan(t, []byte(long), http.MethodGet) {
		t.Fatal("a head longer than the buffer was taken")
	}
	t.Logf("%d of %d seeds taken by the fast reader, all read alike by the standard one", taken, len(respHeadSeeds))
}
