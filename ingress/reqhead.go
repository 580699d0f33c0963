package ingress

// The request head read by hand. The fast path (fast.go) reads each
// request's head with parseRequest, which takes only the plain kind of
// head (CRLF line ends, an origin-form target of plain characters, header
// names that are tokens with values the standard server takes, one Host,
// a body framed by one Content-Length or by chunked alone) and builds
// from it the request http.ReadRequest would build, field for field
// (FuzzParseRequest compares the two). Any other head goes to
// http.ReadRequest as before. One string holds the head, and every string
// of the request is a slice of it; the header's values share one array.

import (
	"net/http"
	"net/textproto"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// maxFastHeaders bounds the header fields parseRequest takes; a head with
// more goes to the standard reader.
const maxFastHeaders = 64

// inlineValues is how many header values a parsedRequest holds in
// itself; a head with more has its values in an array of their own.
const inlineValues = 8

// parsedRequest holds a request, its URL and its header's values in one
// allocation.
type parsedRequest struct {
	req  http.Request
	url  url.URL
	vals [inlineValues]string
}

// parseRequest parses head, a whole request head through its empty line,
// and returns the request http.ReadRequest would return for it, or false
// when the head is not of the plain kind it takes.
func parseRequest(head []byte) (*http.Request, bool) {
	if len(head) < 4 || string(head[len(head)-4:]) != "\r\n\r\n" {
		return nil, false
	}
	// Through the last field's CRLF: every line below ends in CRLF.
	s := string(head[:len(head)-2])
	eol := strings.Index(s, "\r\n")
	method, rest, ok := strings.Cut(s[:eol], " ")
	if !ok || !httpguts.ValidHeaderFieldName(method) {
		return nil, false
	}
	uri, proto, ok := strings.Cut(rest, " ")
	if !ok || proto != "HTTP/1.1" {
		return nil, false
	}
	path, query, hasQuery := strings.Cut(uri, "?")
	if !plainPath(path) || hasQuery && (query == "" || !plainQuery(query)) {
		return nil, false
	}
	fields := s[eol+2:]
	n := strings.Count(fields, "\r\n")
	if n > maxFastHeaders {
		return nil, false
	}
	p := &parsedRequest{}
	vals := p.vals[:]
	if n > inlineValues {
		vals = make([]string, n)
	}
	h := make(http.Header, n)
	host, hosts, k := "", 0, 0
	for len(fields) > 0 {
		eol := strings.Index(fields, "\r\n")
		line := fields[:eol]
		fields = fields[eol+2:]
		name, v, ok := strings.Cut(line, ":")
		if !ok || !httpguts.ValidHeaderFieldName(name) {
			return nil, false // folded lines too: they start with a space
		}
		// Checked before trimming: a bare LF ends a line for the
		// standard reader, and trimming would take it away.
		if !httpguts.ValidHeaderFieldValue(v) {
			return nil, false
		}
		v = textproto.TrimString(v)
		name = textproto.CanonicalMIMEHeaderKey(name)
		if name == "Host" {
			host, hosts = v, hosts+1
			continue
		}
		vals[k] = v
		if old, dup := h[name]; dup {
			h[name] = append(old, v)
		} else {
			h[name] = vals[k : k+1 : k+1]
		}
		k++
	}
	if hosts != 1 || !httpguts.ValidHostHeader(host) {
		return nil, false
	}
	if _, ok := h["Trailer"]; ok {
		return nil, false
	}
	r := &p.req
	cl, hasCL := h["Content-Length"]
	switch te, hasTE := h["Transfer-Encoding"]; {
	case hasTE:
		if hasCL || len(te) != 1 || !asciiLowerIs(te[0], "chunked") {
			return nil, false
		}
		delete(h, "Transfer-Encoding")
		r.TransferEncoding = []string{"chunked"}
		r.ContentLength = -1
	case hasCL:
		if len(cl) != 1 {
			return nil, false
		}
		length, ok := plainLength(cl[0])
		if !ok {
			return nil, false
		}
		r.ContentLength = length
	}
	// As the standard reader does: an HTTP/1.0 cache's no-cache.
	if pragma := h["Pragma"]; len(pragma) > 0 && pragma[0] == "no-cache" {
		if _, ok := h["Cache-Control"]; !ok {
			h["Cache-Control"] = []string{"no-cache"}
		}
	}
	p.url = url.URL{Path: path, RawQuery: query}
	r.Method = method
	r.URL = &p.url
	r.Proto, r.ProtoMajor, r.ProtoMinor = proto, 1, 1
	r.Header = h
	r.Host = host
	r.RequestURI = uri
	r.Close = httpguts.HeaderValuesContainsToken(h["Connection"], "close")
	r.Body = http.NoBody
	return r, true
}

// plainPath reports whether p is an origin-form path whose characters
// the URL keeps as they are: it parses to itself, with no raw form.
func plainPath(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("-_.~$&+,/:;=@", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// plainQuery reports whether q holds only visible ASCII characters but
// '#', which a request's query keeps raw.
func plainQuery(q string) bool {
	for i := 0; i < len(q); i++ {
		if c := q[i]; c <= ' ' || c >= 0x7f || c == '#' {
			return false
		}
	}
	return true
}

// plainLength parses a Content-Length of at most 18 digits.
func plainLength(v string) (int64, bool) {
	if v == "" || len(v) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// asciiLowerIs reports whether v, its ASCII letters lowered, is lower
// (no other case folding, as the standard reader).
func asciiLowerIs(v, lower string) bool {
	if len(v) != len(lower) {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}
