package gateway

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

func newServer(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	cfg.TLS = testutil.ServerTLS(t)
	cfg.Auth = allowAll
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return srv, serveLoopback(t, srv)
}

// serveLoopback serves agents for srv on a loopback port until the test
// ends, and returns the port's address; at the end it closes srv and
// waits for Serve to return: a Close that hangs fails the test instead
// of the test binary.
func serveLoopback(t *testing.T, srv *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		closeWithin(t, srv, 10*time.Second)
		<-served
	})
	return ln.Addr().String()
}

// closeWithin closes srv and fails t if Close takes longer than d.
func closeWithin(t *testing.T, srv *Server, d time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Close()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("Close did not return within %v", d)
	}
}

// closedWithin reports whether the server closed c within d, after
// whatever it sent (a refused connection gets a TLS alert first).
func closedWithin(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return true
}

// A flood of connections that never finish their handshake holds at most
// MaxHandshakes slots; the rest are closed at once, and slots come back when
// the handshake timeout frees them.
func TestHandshakeFloodIsBounded(t *testing.T) {
	_, addr := newServer(t, Config{MaxHandshakes: 2, HandshakeTimeout: time.Second})
	var silent []net.Conn
	defer func() {
		for _, c := range silent {
			c.Close()
		}
	}()
	for i := 0; i < 2; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, c)
	}
	time.Sleep(100 * time.Millisecond) // both are in their handshake
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	if !closedWithin(extra, 500*time.Millisecond) {
		t.Fatal("connection above the handshake cap was not closed at once")
	}
	for i, c := range silent {
		if !closedWithin(c, 5*time.Second) {
			t.Fatalf("silent connection %d outlived the handshake timeout", i)
		}
	}
	// The slots are free again: a new connection waits in its handshake.
	again, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if closedWithin(again, 300*time.Millisecond) {
		t.Fatal("handshake slots were not released")
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{TLS: &tls.Config{Certificates: []tls.Certificate{{}}}, Auth: allowAll}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]Config{
		"no tls":      {Auth: allowAll},
		"no auth":     {TLS: ok.TLS},
		"bad range":   {TLS: ok.TLS, Auth: allowAll, PortMin: 40000, PortMax: 30000},
		"high port":   {TLS: ok.TLS, Auth: allowAll, PortMin: 1, PortMax: 70000},
		"negative ls": {TLS: ok.TLS, Auth: allowAll, Lease: -time.Second},
	} {
		if c.Validate() == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// allowAll lets every agent in as one identity, for the tests of this
// package (the allowall module imports it).
var allowAll = AuthFuncs{
	AuthenticateFunc: func(context.Context, Credentials) (Identity, error) { return Identity{Name: "anonymous"}, nil },
	AuthorizeFunc:    func(context.Context, Identity, string) error { return nil },
}
