package ingress

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/http/httputil"
	"strings"
	"testing"
)

func TestChunkScanner(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, in string
		end      int // -1: no end in the input; -2: refused
		data     int64
	}{
		{"simple", "3\r\nabc\r\n0\r\n\r\nNEXT", 13, 3},
		{"extension and blanks", "3 ;a=b\r\nabc\r\n0;x\r\n\r\n", 20, 3},
		{"trailer", "2\r\nhi\r\n0\r\nX-A: 1\r\nB:\r\n\r\nGET", 24, 2},
		{"upper hex", "A\r\n0123456789\r\n0\r\n\r\n", 20, 10},
		{"unfinished", "5\r\nab", -1, 2},
		{"bare LF size", "3\nabc\r\n0\r\n\r\n", -2, 0},
		{"bare LF data", "3\r\nabc\n0\r\n\r\n", -2, 3},
		{"bare LF end", "0\r\n\n", -2, 0},
		{"no digits", "\r\n", -2, 0},
		{"leading blank", " 3\r\nabc\r\n0\r\n\r\n", -2, 0},
		{"sign", "+3\r\nabc\r\n0\r\n\r\n", -2, 0},
		{"too many digits", "1000000000000000\r\n", -2, 0},
		{"folded trailer", "0\r\nX: 1\r\n 2\r\n\r\n", -2, 0},
		{"trailer without colon", "0\r\nX\r\n\r\n", -2, 0},
		{"control in extension", "1;\x00\r\na\r\n0\r\n\r\n", -2, 0},
		{"long line", "1;" + strings.Repeat("x", maxChunkLine) + "\r\n", -2, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s chunkScanner
			n, err := s.scan([]byte(tc.in))
			switch {
			case tc.end == -2:
				if err == nil {
					t.Fatalf("accepted %q (%d bytes)", tc.in, n)
				}
			case err != nil:
				t.Fatalf("refused: %v", err)
			case tc.end == -1:
				if s.done() || n != len(tc.in) {
					t.Fatalf("ended at %d of an unfinished body", n)
				}
			case !s.done() || n != tc.end:
				t.Fatalf("ended at %d (done %v), want %d", n, s.done(), tc.end)
			}
			if tc.end != -2 && s.data != tc.data {
				t.Errorf("%d bytes of data, want %d", s.data, tc.data)
			}
		})
	}
}

// FuzzChunkScanner: a body the scanner accepts is one the standard
// library's readers frame the same way (same data, same end), whatever
// pieces it comes in.
func FuzzChunkScanner(f *testing.F) {
	for _, s := range []string{
		"3\r\nabc\r\n0\r\n\r\n",
		"4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Sum: abc\r\n\r\n",
		"1\r\na\r\n0\r\nA: b\r\nC: d\r\n\r\nGET / HTTP/1.1\r\n\r\n",
		"0\r\n\r\n",
		"3\nabc\r\n0\r\n\r\n",
	} {
		f.Add([]byte(s), uint8(1))
	}
	f.Fuzz(func(t *testing.T, in []byte, step uint8) {
		var whole chunkScanner
		n, err := whole.scan(in)
		// The same in pieces.
		var pieces chunkScanner
		k := max(int(step), 1)
		m := 0
		var perr error
		for m < len(in) && !pieces.done() && perr == nil {
			var c int
			c, perr = pieces.scan(in[m:min(m+k, len(in))])
			m += c
		}
		if (err == nil) != (perr == nil) || whole.done() != pieces.done() || (err == nil && n != m) || whole.data != pieces.data {
			t.Fatalf("whole: %d %v done=%v data=%d; in pieces of %d: %d %v done=%v data=%d",
				n, err, whole.done(), whole.data, k, m, perr, pieces.done(), pieces.data)
		}
		if err != nil || !whole.done() {
			return
		}
		// The standard reader decodes the same data and ends at the same
		// place, trailer included.
		body := in[:n]
		data, err := io.ReadAll(httputil.NewChunkedReader(bytes.NewReader(body)))
		if err != nil || int64(len(data)) != whole.data {
			t.Fatalf("standard reader: %d bytes, %v; scanner: %d", len(data), err, whole.data)
		}
		req := "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + string(body) + "GET"
		br := bufio.NewReader(strings.NewReader(req))
		r, err := http.ReadRequest(br)
		if err != nil {
			t.Fatalf("standard request reader: %v", err)
		}
		got, err := io.ReadAll(r.Body)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("standard request body: %q, %v; want %q", got, err, data)
		}
		if rest, _ := io.ReadAll(br); string(rest) != "GET" {
			t.Fatalf("standard reader left %q after the body, want GET", rest)
		}
	})
}
