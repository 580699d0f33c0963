package faults

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// httpBackend is an HTTP server that records what reaches it.
type httpBackend struct {
	addr string

	mu       sync.Mutex
	requests []*http.Request // headers only; bodies are read by the handler
	bodies   []int64         // bytes of each request's body

	inFlight, maxInFlight atomic.Int64
}

// startHTTPBackend serves HTTP on loopback until the case ends. Each
// request's body is read to the end; the answer is "ok N" with N the
// body's length.
func startHTTPBackend(c *tc) *httpBackend {
	c.Helper()
	b := &httpBackend{}
	b.addr = startHTTPHandler(c, b)
	return b
}

// startHTTPHandler serves h over HTTP on loopback until the case ends and
// returns its address.
func startHTTPHandler(c *tc, h http.Handler) string {
	c.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		c.Fatalf("listen: %v", err)
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second}
	go hs.Serve(ln)
	c.Cleanup(func() { hs.Close() })
	return ln.Addr().String()
}

func (b *httpBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := b.inFlight.Add(1)
	defer b.inFlight.Add(-1)
	for {
		m := b.maxInFlight.Load()
		if n <= m || b.maxInFlight.CompareAndSwap(m, n) {
			break
		}
	}
	body, _ := io.Copy(io.Discard, r.Body)
	b.mu.Lock()
	b.requests = append(b.requests, &http.Request{Method: r.Method, URL: r.URL, Host: r.Host, Header: r.Header.Clone()})
	b.bodies = append(b.bodies, body)
	b.mu.Unlock()
	fmt.Fprintf(w, "ok %d", body)
}

// seen returns the requests that reached the backend so far.
func (b *httpBackend) seen() []*http.Request {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*http.Request(nil), b.requests...)
}

// response is what a raw HTTP exchange returned.
type response struct {
	status int
	body   string
	err    error // the connection ended without a response
}

// rawHTTP sends raw bytes to addr and reads one response, within d.
func rawHTTP(addr, raw string, d time.Duration) response {
	conn, err := net.DialTimeout("tcp", addr, d)
	if err != nil {
		return response{err: err}
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(d))
	// Written aside: a gateway may answer (and close) before reading all
	// of a request it refuses.
	werr := make(chan error, 1)
	go func() {
		_, err := io.WriteString(conn, raw)
		werr <- err
	}()
	r := readResponse(bufio.NewReader(conn))
	if err := <-werr; r.err != nil && err != nil {
		r.err = fmt.Errorf("%w (writing: %v)", r.err, err)
	}
	return r
}

func readResponse(br *bufio.Reader) response {
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return response{err: err}
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return response{status: resp.StatusCode, body: string(body)}
}

func (r response) String() string {
	if r.err != nil {
		return "no response: " + r.err.Error()
	}
	return fmt.Sprintf("%d %q", r.status, strings.TrimSpace(r.body))
}

// waitHTTP polls a GET of the tunnel name on the ingress at addr until it
// answers 200.
func waitHTTP(c *tc, addr, name string) {
	c.Helper()
	req := "GET / HTTP/1.1\r\nHost: " + host(name, addr) + "\r\nConnection: close\r\n\r\n"
	var last response
	if err := poll(10*time.Second, func() error {
		if last = rawHTTP(addr, req, 5*time.Second); last.status != http.StatusOK {
			return fmt.Errorf("GET %s: %v", host(name, addr), last)
		}
		return nil
	}); err != nil {
		c.Fatalf("tunnel %s over HTTP: %v", name, err)
	}
}
