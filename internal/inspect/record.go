package inspect

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// BodyLimit is how much of each body an entry keeps; the rest is counted.
const BodyLimit = 64 << 10

// Summary is what the list of requests shows of one exchange.
type Summary struct {
	ID      uint64    `json:"id"`
	Time    time.Time `json:"time"`
	Tunnel  string    `json:"tunnel"`
	Visitor string    `json:"visitor,omitempty"`
	Method  string    `json:"method"`
	Host    string    `json:"host"`
	// Path is the request's target as sent: path and query.
	Path  string `json:"path"`
	Proto string `json:"proto"`
	// Status is the response's status code; 0 when there was none.
	Status int `json:"status"`
	// DurationMS runs from the first byte of the request to the last of
	// the response, in milliseconds.
	DurationMS float64 `json:"duration_ms"`
	// RequestSize and ResponseSize are the sizes of the bodies.
	RequestSize  int64 `json:"request_size"`
	ResponseSize int64 `json:"response_size"`
	// ReplayOf is the entry a replay re-sent; 0 for a visitor's request.
	ReplayOf uint64 `json:"replay_of,omitempty"`
	// Error says why the exchange was not recorded in full.
	Error string `json:"error,omitempty"`
}

// Message is the head and the start of the body of a request or a
// response. Secret header values are redacted.
type Message struct {
	Header http.Header `json:"header"`
	// Body is the first BodyLimit bytes of the body (base64 in JSON).
	Body []byte `json:"body"`
	// Size is the length of the whole body, Truncated whether Body holds
	// less than that.
	Size      int64 `json:"size"`
	Truncated bool  `json:"truncated"`
	// Complete is whether the body was read to its end.
	Complete bool `json:"complete"`
}

// Entry is one recorded exchange: a request and its response.
type Entry struct {
	Summary
	Request  Message `json:"request"`
	Response Message `json:"response"`

	// rawHeader is the request's header as sent, secrets included: a
	// replay sends it again. It never leaves the process.
	rawHeader http.Header
}

// retained estimates the bytes e keeps: its bodies and headers.
func (e *Entry) retained() int64 {
	return int64(len(e.Request.Body)+len(e.Response.Body)) +
		headerSize(e.Request.Header) + headerSize(e.Response.Header) + headerSize(e.rawHeader)
}

func headerSize(h http.Header) int64 {
	var n int64
	for k, vs := range h {
		for _, v := range vs {
			n += int64(len(k) + len(v))
		}
	}
	return n
}

// redacted is what replaces a secret.
const redacted = "[redacted]"

// redact returns a copy of h with the values of credentials and cookies
// replaced: the scheme of an Authorization stays, and the names and
// attributes of cookies, so that the page still tells them apart.
func redact(h http.Header) http.Header {
	out := h.Clone()
	if out == nil {
		out = http.Header{}
	}
	for _, k := range []string{"Authorization", "Proxy-Authorization"} {
		for i, v := range out[k] {
			scheme, _, ok := strings.Cut(strings.TrimSpace(v), " ")
			if ok {
				out[k][i] = scheme + " " + redacted
			} else {
				out[k][i] = redacted
			}
		}
	}
	for i, v := range out["Cookie"] {
		pairs := strings.Split(v, ";")
		for j, p := range pairs {
			pairs[j] = redactPair(p)
		}
		out["Cookie"][i] = strings.Join(pairs, ";")
	}
	for i, v := range out["Set-Cookie"] {
		first, attrs, ok := strings.Cut(v, ";")
		out["Set-Cookie"][i] = redactPair(first)
		if ok {
			out["Set-Cookie"][i] += ";" + attrs
		}
	}
	return out
}

// redactPair turns name=value into name=[redacted], keeping the spaces
// around.
func redactPair(p string) string {
	name, _, ok := strings.Cut(p, "=")
	if !ok {
		return redacted
	}
	return name + "=" + redacted
}

// capture keeps the first BodyLimit bytes written to it and counts all.
type capture struct {
	buf []byte
	n   int64
}

func (c *capture) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	if room := BodyLimit - len(c.buf); room > 0 {
		c.buf = append(c.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// copyBufs are the buffers bodies are read through.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

// readBody reads body to its end, or to an error, into a Message's body
// fields; it reports the error.
func readBody(m *Message, body io.Reader) error {
	var c capture
	var err error
	if body != nil && body != http.NoBody {
		buf := copyBufs.Get().(*[]byte)
		_, err = io.CopyBuffer(&c, body, *buf)
		copyBufs.Put(buf)
	}
	m.Body, m.Size = c.buf, c.n
	m.Truncated = c.n > int64(len(c.buf))
	m.Complete = err == nil
	return err
}
