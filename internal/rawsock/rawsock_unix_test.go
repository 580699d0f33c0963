//go:build unix

package rawsock

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

func rawConn(t *testing.T, c *net.TCPConn) syscall.RawConn {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

// TestWriteOnce: what the socket takes is written, a full socket takes
// nothing without an error or a wait, and a reset socket gives the error.
func TestWriteOnce(t *testing.T) {
	c, s := testutil.LoopbackPair(t)
	rc := rawConn(t, c)
	msg := []byte("hello")
	if n, err := WriteOnce(rc, msg); n != len(msg) || err != nil {
		t.Fatalf("WriteOnce = %d, %v", n, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(s, got); err != nil || string(got) != "hello" {
		t.Fatalf("read %q, %v", got, err)
	}

	// Fill the socket while the peer does not read: the writes end with
	// one that takes nothing, at once.
	c.SetWriteBuffer(4096)
	s.SetReadBuffer(4096)
	chunk := make([]byte, 64<<10)
	total := 0
	start := time.Now()
	for i := 0; ; i++ {
		n, err := WriteOnce(rc, chunk)
		if err != nil {
			t.Fatal(err)
		}
		total += n
		if n == 0 {
			break
		}
		if i == 10000 {
			t.Fatalf("%d bytes written and the socket still takes more", total)
		}
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Fatalf("filling the socket took %v: a write waited", waited)
	}
	if total == 0 {
		t.Fatal("nothing written before the socket was full")
	}

	// A peer that closed with unread input reset the connection.
	s.Close()
	if err := testutil.Poll(10*time.Second, func() error {
		_, err := WriteOnce(rc, msg)
		if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
			return fmt.Errorf("writing to a reset connection: %v, want a reset", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestWriteOnceAllocs: a write to a visitor allocates nothing.
func TestWriteOnceAllocs(t *testing.T) {
	c, s := testutil.LoopbackPair(t)
	rc := rawConn(t, c)
	msg := []byte("x")
	buf := make([]byte, 1)
	n := testing.AllocsPerRun(100, func() {
		if n, err := WriteOnce(rc, msg); n != 1 || err != nil {
			t.Fatalf("WriteOnce = %d, %v", n, err)
		}
		if _, err := s.Read(buf); err != nil {
			t.Fatal(err)
		}
	})
	if n != 0 {
		t.Fatalf("%.0f allocations per write, want none", n)
	}
}
