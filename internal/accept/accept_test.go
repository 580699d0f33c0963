package accept

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
)

// flaky fails with a timeout error n times, then accepts.
type flaky struct {
	net.Listener
	n int
}

func (f *flaky) Accept() (net.Conn, error) {
	if f.n > 0 {
		f.n--
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.ErrDeadlineExceeded}
	}
	return f.Listener.Accept()
}

func TestNext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	got, err := Next(&flaky{Listener: ln, n: 3}, nil, log, "accept")
	if err != nil {
		t.Fatalf("after timeouts: %v", err)
	}
	got.Close()

	// A timeout while done is closed, and any other error, are returned.
	done := make(chan struct{})
	close(done)
	if _, err := Next(&flaky{Listener: ln, n: 1}, done, log, "accept"); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("timeout after done: %v", err)
	}
	ln.Close()
	if _, err := Next(ln, nil, log, "accept"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("closed listener: %v", err)
	}
}
