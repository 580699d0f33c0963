package ingress

// A strict reader of the common response head, for fast.go's path: an
// HTTP/1.1 final response whose lines all end in CRLF, framed by one
// Content-Length or by "Transfer-Encoding: chunked", with no header that
// asks for anything unusual. Its fields are copied to the visitor's head
// as they came (hop-by-hop ones left out) instead of being parsed into a
// map and written out again. Anything else (another version, an interim
// response, a folded or odd line, a Trailer declaration, a Connection
// header naming fields, a head longer than the stream's buffer) is left
// unread for http.ReadResponse, which decides as the reverse proxy would.

import (
	"bufio"
	"bytes"
	"net/http"
	"time"
)

// respHead is what exchange needs of the final response head.
type respHead struct {
	code    int
	chunked bool  // the body is chunked (never when bodyless)
	length  int64 // the body's length when not chunked; -1 until EOF
	close   bool  // the backend will not take another request on the stream
}

// bodylessResponse reports whether a response to method with code has no
// body whatever its head says.
func bodylessResponse(method string, code int) bool {
	return method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified
}

// scanResponseHead reads a final response head from br if it is one this
// reader takes, appending the head for the visitor to out: the status
// line, the backend's fields but the hop-by-hop ones, Date when missing,
// and "Transfer-Encoding: chunked" for a chunked body; the caller adds
// "Connection: close" if it wants and the empty line. With ok false
// nothing was consumed from br (err is then a read error, or nil when the
// head is one to leave to the standard reader).
func scanResponseHead(br *bufio.Reader, method string, out []byte) (h respHead, b []byte, ok bool, err error) {
	end, err := crlfHeadEnd(br)
	if err != nil || end < 0 {
		return h, out, false, err
	}
	p, _ := br.Peek(end)
	h, b, ok = parseResponseHead(p, method, out)
	if !ok {
		return h, out, false, nil
	}
	br.Discard(end)
	return h, b, true, nil
}

// crlfHeadEnd returns the length of the head at the front of br, through its
// empty line, reading as needed; -1 when a line ends in a bare LF before
// the end (left to the standard reader) or the head does not fit in br.
func crlfHeadEnd(br *bufio.Reader) (int, error) {
	from := 0 // where the current line starts
	for {
		if br.Buffered() == 0 {
			if _, err := br.Peek(1); err != nil {
				return -1, err
			}
		}
		p, _ := br.Peek(br.Buffered())
		end, next := scanCRLFLines(p, from)
		if end != 0 {
			return end, nil
		}
		from = next
		if br.Buffered() >= br.Size() {
			return -1, nil
		}
		// More of the head is on its way: wait for one more byte.
		if _, err := br.Peek(br.Buffered() + 1); err != nil {
			return -1, err
		}
	}
}

// scanCRLFLines follows the lines of a head in p from from, the start of
// a line: it returns the head's length once its empty line is in p, -1 at
// a line that ends in a bare LF, or 0 and where the unfinished line starts
// when p ends first.
func scanCRLFLines(p []byte, from int) (end, next int) {
	for {
		i := bytes.IndexByte(p[from:], '\n')
		if i < 0 {
			return 0, from
		}
		nl := from + i
		if nl == 0 || p[nl-1] != '\r' {
			return -1, from
		}
		if nl == from+1 { // "\r\n": the empty line
			return nl + 1, from
		}
		from = nl + 1
	}
}

// parseResponseHead parses a whole head p (every line CRLF-terminated, the
// last one empty), as scanResponseHead describes.
func parseResponseHead(p []byte, method string, out []byte) (h respHead, b []byte, ok bool) {
	line, rest, _ := bytes.Cut(p, crlf)
	// "HTTP/1.1 200 OK": the version exactly, a three-digit code, then a
	// space and any reason (or none).
	if len(line) < 12 || string(line[:9]) != "HTTP/1.1 " || (len(line) > 12 && line[12] != ' ') {
		return h, out, false
	}
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return h, out, false
		}
		h.code = h.code*10 + int(c-'0')
	}
	if h.code < 200 || h.code > 599 || !validFieldValue(line[min(len(line), 13):]) {
		return h, out, false
	}
	b = appendStatusLine(out, h.code)
	h.length = -1
	var haveLength, haveTE, haveDate bool
	for {
		line, rest, _ = bytes.Cut(rest, crlf)
		if len(line) == 0 {
			break
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !validFieldName(line[:colon]) {
			return h, out, false // also a folded line: it starts with a space
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		if !validFieldValue(value) {
			return h, out, false
		}
		switch {
		case asciiEqualFold(name, "Content-Length"):
			if haveLength || len(value) == 0 || len(value) > 18 {
				return h, out, false
			}
			var n int64
			for _, c := range value {
				if c < '0' || c > '9' {
					return h, out, false
				}
				n = n*10 + int64(c-'0')
			}
			haveLength, h.length = true, n
		case asciiEqualFold(name, "Transfer-Encoding"):
			if haveTE || !asciiEqualFold(value, "chunked") {
				return h, out, false
			}
			haveTE = true
			continue
		case asciiEqualFold(name, "Connection"):
			// Only close and keep-alive: a field named here would have
			// to be removed too.
			for tok := range bytes.SplitSeq(value, []byte(",")) {
				switch tok = trimOWS(tok); {
				case asciiEqualFold(tok, "close"):
					h.close = true
				case len(tok) == 0, asciiEqualFold(tok, "keep-alive"):
				default:
					return h, out, false
				}
			}
			continue
		case asciiEqualFold(name, "Trailer"):
			return h, out, false
		case asciiEqualFold(name, "Proxy-Connection"), asciiEqualFold(name, "Keep-Alive"),
			asciiEqualFold(name, "Proxy-Authenticate"), asciiEqualFold(name, "Proxy-Authorization"),
			asciiEqualFold(name, "Te"), asciiEqualFold(name, "Upgrade"):
			continue // hop by hop
		case asciiEqualFold(name, "Date"):
			haveDate = true
		}
		b = append(b, name...)
		b = append(b, ": "...)
		b = append(b, value...)
		b = append(b, "\r\n"...)
	}
	if haveTE && haveLength {
		return h, out, false // the standard reader drops the length: let it
	}
	if !haveDate {
		b = appendDate(b)
	}
	switch {
	case bodylessResponse(method, h.code):
		h.length = 0
	case haveTE:
		h.chunked = true
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	case h.length < 0:
		h.close = true // the body ends with the stream
	}
	return h, b, true
}

var crlf = []byte("\r\n")

// appendDate appends a Date field of now, for a response that has none
// (as the standard server adds it).
func appendDate(b []byte) []byte {
	b = append(b, "Date: "...)
	b = time.Now().UTC().AppendFormat(b, http.TimeFormat)
	return append(b, "\r\n"...)
}

// trimOWS trims spaces and tabs at both ends.
func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// validFieldName reports whether b is a token (RFC 9110, 5.6.2).
func validFieldName(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 || !tokenByte[c] {
			return false
		}
	}
	return true
}

// validFieldValue reports whether b has no control character but HTAB
// (no CR, LF or NUL) and no DEL: a field value, or a reason phrase.
func validFieldValue(b []byte) bool {
	for _, c := range b {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

var tokenByte = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// asciiEqualFold compares b with the ASCII string s, ignoring case.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
