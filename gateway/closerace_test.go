package gateway

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

// lateListener returns its one connection from Accept only once it has
// been closed: an agent's connection that the kernel handed over just as
// Close began.
type lateListener struct {
	closed chan struct{}
	once   sync.Once
	conn   net.Conn
	handed atomic.Bool
}

func (l *lateListener) Accept() (net.Conn, error) {
	<-l.closed
	if l.handed.CompareAndSwap(false, true) {
		return l.conn, nil
	}
	return nil, net.ErrClosed
}

func (l *lateListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *lateListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }

// countingConn counts the reads of the connection it wraps.
type countingConn struct {
	net.Conn
	reads atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	c.reads.Add(1)
	return c.Conn.Read(p)
}

// TestCloseRacingAccept: a connection accepted while Close runs is closed
// unread, its handshake slot given back, and Serve returns
// ErrServerClosed. Before, Serve counted a handshake goroutine that Close
// might already have stopped waiting for: under the race detector (make
// test) the count taken during Close's wait was a data race, and the
// goroutine outlived Close.
func TestCloseRacingAccept(t *testing.T) {
	srv, err := New(Config{TLS: testutil.ServerTLS(t), Auth: allowAll,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ours, agent := net.Pipe()
	defer agent.Close()
	conn := &countingConn{Conn: ours}
	ln := &lateListener{closed: make(chan struct{}), conn: conn}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	// Serve has tracked the listener once Close can close it.
	if err := testutil.Poll(5*time.Second, func() error {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		if len(srv.listeners) == 0 {
			return errors.New("Serve has not started")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	srv.Close()
	select {
	case err := <-served:
		if !errors.Is(err, ErrServerClosed) {
			t.Fatalf("Serve returned %v, want ErrServerClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
	if !ln.handed.Load() {
		t.Fatal("the listener never handed out its connection")
	}
	// The agent's end sees the connection closed.
	agent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := agent.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("the agent's end read %v, want EOF: the connection was not closed", err)
	}
	if n := conn.reads.Load(); n != 0 {
		t.Errorf("the gateway read the connection accepted during Close %d times, want none", n)
	}
	if st := srv.HandshakeStats(); st.InProgress != 0 {
		t.Errorf("%d handshakes in progress after Close, want 0", st.InProgress)
	}
}
