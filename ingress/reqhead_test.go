package ingress

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"reflect"
	"testing"
)

// Heads parseRequest takes: what load tools, command-line clients and
// browsers send.
var plainHeads = []string{
	"GET / HTTP/1.1\r\nHost: web.gw.test\r\n\r\n",
	"GET /index.html HTTP/1.1\r\nHost: web.gw.test:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
	"GET /app/list?page=2&sort=name%20asc HTTP/1.1\r\nHost: web.gw.test\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n" +
		"Accept: text/html,application/xhtml+xml;q=0.9,*/*;q=0.8\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n" +
		"Connection: keep-alive\r\nCookie: a=1; b=2\r\nUpgrade-Insecure-Requests: 1\r\nPragma: no-cache\r\n\r\n",
	"POST /api/items HTTP/1.1\r\nHost: web.gw.test\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n",
	"PUT /up HTTP/1.1\r\nHost: web.gw.test\r\nTransfer-Encoding: chunked\r\n\r\n",
	"GET / HTTP/1.1\r\nhost: web.gw.test\r\nx-lower: yes\r\nX-Dup: 1\r\nX-Dup: 2\r\nX-Empty:\r\nConnection: close\r\n\r\n",
	"DELETE /a/b;c=d/@e:f HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
}

// Heads parseRequest leaves to the standard reader.
var unusualHeads = []string{
	"GET / HTTP/1.1\nHost: web.gw.test\n\n",                            // bare LF
	"GET / HTTP/1.1\r\nHost: a.gw.test\r\nHost: b.gw.test\r\n\r\n",     // two hosts
	"GET / HTTP/1.1\r\n\r\n",                                           // none
	"GET / HTTP/1.0\r\nHost: web.gw.test\r\n\r\n",                      // HTTP/1.0
	"GET http://web.gw.test/ HTTP/1.1\r\nHost: web.gw.test\r\n\r\n",    // absolute form
	"GET /a%2Fb HTTP/1.1\r\nHost: web.gw.test\r\n\r\n",                 // escaped path
	"GET /a? HTTP/1.1\r\nHost: web.gw.test\r\n\r\n",                    // empty query
	"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: web.gw.test\r\n\r\n",           // raw UTF-8
	"GET / HTTP/1.1\r\nHost: web.gw.test\r\nX-A: 1\r\n folded\r\n\r\n", // obsolete folding
	"GET / HTTP/1.1\r\nHost: web.gw.test\r\nBad Name: 1\r\n\r\n",       // name with a space
	"POST / HTTP/1.1\r\nHost: w.gw.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: w.gw.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: w.gw.test\r\nContent-Length: +3\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: w.gw.test\r\nTransfer-Encoding: identity\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: w.gw.test\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: web.gw.test\r\nX-Ctl: a\x01b\r\n\r\n", // a control byte
	"GET / HTTP/1.1\r\nHost:\nweb.gw.test\r\n\r\n",                 // a bare LF in a field
	"GET  / HTTP/1.1\r\nHost: web.gw.test\r\n\r\n",                 // two spaces
}

// sameRequest reports how got, from parseRequest, differs from want, from
// http.ReadRequest, in what the fast path reads of a request.
func sameRequest(got, want *http.Request) error {
	type view struct {
		Method, RequestURI, Proto string
		Major, Minor              int
		URL                       string
		Path, RawPath, RawQuery   string
		ForceQuery                bool
		Host                      string
		Header                    http.Header
		ContentLength             int64
		TransferEncoding          []string
		Close                     bool
		Trailer                   http.Header
	}
	v := func(r *http.Request) view {
		h := r.Header
		if len(h) == 0 {
			h = nil
		}
		return view{r.Method, r.RequestURI, r.Proto, r.ProtoMajor, r.ProtoMinor, r.URL.String(),
			r.URL.Path, r.URL.RawPath, r.URL.RawQuery, r.URL.ForceQuery, r.Host, h,
			r.ContentLength, r.TransferEncoding, r.Close, r.Trailer}
	}
	if g, w := v(got), v(want); !reflect.DeepEqual(g, w) {
		return fmt.Errorf("parsed by hand\n%+v\nby the standard reader\n%+v", g, w)
	}
	return nil
}

func readStd(head []byte) (*http.Request, error) {
	return http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
}

func TestParseRequestPlain(t *testing.T) {
	for _, head := range plainHeads {
		got, ok := parseRequest([]byte(head))
		if !ok {
			t.Errorf("left to the standard reader: %q", head)
			continue
		}
		want, err := readStd([]byte(head))
		if err != nil {
			t.Fatalf("the standard reader refuses %q: %v", head, err)
		}
		if err := sameRequest(got, want); err != nil {
			t.Errorf("%q: %v", head, err)
		}
	}
}

func TestParseRequestUnusual(t *testing.T) {
	for _, head := range unusualHeads {
		if _, ok := parseRequest([]byte(head)); ok {
			t.Errorf("took %q", head)
		}
	}
}

// FuzzParseRequest: whatever head parseRequest takes, the standard
// reader takes too, and reads as the same request.
func FuzzParseRequest(f *testing.F) {
	for _, h := range append(plainHeads, unusualHeads...) {
		f.Add([]byte(h))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		n := headEnd(p)
		if n == 0 {
			return
		}
		head := p[:n]
		got, ok := parseRequest(head)
		if !ok {
			return
		}
		want, err := readStd(head)
		if err != nil {
			t.Fatalf("took %q, which the standard reader refuses: %v", head, err)
		}
		if err := sameRequest(got, want); err != nil {
			t.Fatalf("%q: %v", head, err)
		}
	})
}

// The hand-read head costs less than the standard reader's.
func BenchmarkParseRequest(b *testing.B) {
	head := []byte(plainHeads[2])
	b.Run("hand", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := parseRequest(head); !ok {
				b.Fatal("left")
			}
		}
	})
	b.Run("standard", func(b *testing.B) {
		b.ReportAllocs()
		br := bufio.NewReaderSize(nil, 4<<10)
		for b.Loop() {
			br.Reset(bytes.NewReader(head))
			if _, err := http.ReadRequest(br); err != nil {
				b.Fatal(err)
			}
		}
	})
}
