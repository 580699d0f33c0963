package gateway

import (
	"bytes"
	"io"
	"net"
	"strconv"
	"time"
)

// Bounds of the answer a tunnel's TCP port gives while no agent is online.
const (
	// offlineSniff bounds the wait for a visitor's first bytes.
	offlineSniff = 2 * time.Second
	// offlineLinger bounds the reading of what the visitor sends after
	// the answer, so that closing does not reset the answer away.
	offlineLinger = time.Second
	// offlineDrain bounds how much of it is read.
	offlineDrain = 64 << 10
)

// offlineBody is what an HTTP visitor of a tunnel without an agent reads,
// the same words as on the gateway's HTTP ingress.
const offlineBody = "503 Service Unavailable: no agent is online for this tunnel\n"

var offlineResponse = []byte("HTTP/1.1 503 Service Unavailable\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"Retry-After: 5\r\n" +
	"Connection: close\r\n" +
	"Content-Length: " + strconv.Itoa(len(offlineBody)) + "\r\n\r\n" + offlineBody)

// httpMethods start the request line of an HTTP/1 request.
var httpMethods = [][]byte{
	[]byte("GET "), []byte("HEAD "), []byte("POST "), []byte("PUT "), []byte("DELETE "),
	[]byte("OPTIONS "), []byte("PATCH "), []byte("CONNECT "), []byte("TRACE "),
}

// answerOffline answers a visitor of a tunnel whose agents are all
// offline (its lease running): an HTTP request, the usual case when a
// reverse proxy in front sends its visitors to the tunnel's port, gets a
// 503 that says so, rather than a reset the proxy would turn into a vague
// 502; anything else is reset, as before. Every wait is bounded.
func answerOffline(c net.Conn) {
	c.SetDeadline(time.Now().Add(offlineSniff))
	buf := make([]byte, 8)
	n, _ := io.ReadAtLeast(c, buf, len("HEAD "))
	if !isHTTPRequest(buf[:n]) {
		reset(c)
		return
	}
	if _, err := c.Write(offlineResponse); err != nil {
		reset(c)
		return
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	c.SetDeadline(time.Now().Add(offlineLinger))
	io.CopyN(io.Discard, c, offlineDrain)
	c.Close()
}

// isHTTPRequest reports whether b starts like an HTTP/1 request line.
func isHTTPRequest(b []byte) bool {
	for _, m := range httpMethods {
		if bytes.HasPrefix(b, m) || bytes.HasPrefix(m, b) && len(b) >= len("HEAD ") {
			return true
		}
	}
	return false
}
