package mux

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/diglett/diglett/internal/testutil"
)

// gatedConn holds every Read until gate is closed, so that what the peer
// sends stays unread in the socket.
type gatedConn struct {
	net.Conn
	gate chan struct{}
}

func (g gatedConn) Read(p []byte) (int, error) {
	<-g.gate
	return g.Conn.Read(p)
}

// unreadBytes is what the kernel holds unread in c's TCP socket.
func unreadBytes(t *testing.T, c net.Conn) int {
	t.Helper()
	rc, err := c.(*tls.Conn).NetConn().(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var ioErr error
	if err := rc.Control(func(fd uintptr) { n, ioErr = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); err != nil {
		t.Fatal(err)
	}
	if ioErr != nil {
		t.Fatal(ioErr)
	}
	return n
}

// closeWithUnreadInput starts a client session on one end of a TLS
// connection whose reads are held, has the other end (the test's raw
// peer) send a ping that stays unread, and closes the session with code 5
// before letting its receive loop read. It returns the session and the
// raw peer.
func closeWithUnreadInput(t *testing.T) (*Session, *tls.Conn) {
	t.Helper()
	c, s := tlsConns(t)
	gate := make(chan struct{})
	sess := Client(gatedConn{c, gate}, Config{KeepAlivePeriod: time.Hour})
	t.Cleanup(func() { sess.Close() })
	if _, err := s.Write(frame(typePing, flagSYN, 0, 42)); err != nil {
		t.Fatal(err)
	}
	if err := testutil.Poll(10*time.Second, func() error {
		if unreadBytes(t, c) == 0 {
			return errors.New("the ping has not reached the session's socket")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sess.CloseWithError(5)
	close(gate)
	return sess, s.(*tls.Conn)
}

// readGoAway reads frames from the raw peer, past the session's first
// ping, and checks the next is a GoAway with code.
func readGoAway(t *testing.T, peer net.Conn, code uint32) {
	t.Helper()
	peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	var h [headerSize]byte
	for {
		if _, err := io.ReadFull(peer, h[:]); err != nil {
			t.Fatalf("reading the GoAway: %v", err)
		}
		if h[1] != typePing {
			break
		}
	}
	if h[1] != typeGoAway || binary.BigEndian.Uint32(h[8:]) != code {
		t.Fatalf("frame type %d with %d, want a GoAway with code %d", h[1], binary.BigEndian.Uint32(h[8:]), code)
	}
}

// TestCloseLingersForThePeer: a session closed with input it has not read
// still ends its connection cleanly. It reads on after its GoAway, and
// closes once the peer has, so the kernel sends no reset: the peer reads
// the GoAway and then the end of the connection.
func TestCloseLingersForThePeer(t *testing.T) {
	sess, peer := closeWithUnreadInput(t)
	readGoAway(t, peer, 5)
	// A peer ends its side on a GoAway.
	if err := peer.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	n, err := peer.Read(make([]byte, 1))
	if err != io.EOF {
		t.Fatalf("after the GoAway the peer read %d bytes and %v, want the connection's end", n, err)
	}
	// It closed on the peer's end, not at the bound.
	if waited := time.Since(start); waited >= closeLinger {
		t.Fatalf("the session closed %v after the peer's end, want at once", waited)
	}
	waitRecvEnded(t, sess)
}

// waitRecvEnded waits for sess's receive loop to end for good.
func waitRecvEnded(t *testing.T, sess *Session) {
	t.Helper()
	if err := testutil.Poll(10*time.Second, func() error {
		if !sess.recvEnded.Load() {
			return errors.New("the receive loop did not end")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestCloseLingerBounded: a peer that neither reads on nor closes holds a
// closed session's connection for closeLinger at most.
func TestCloseLingerBounded(t *testing.T) {
	sess, peer := closeWithUnreadInput(t)
	readGoAway(t, peer, 5)
	start := time.Now()
	waitRecvEnded(t, sess)
	if waited := time.Since(start); waited > closeLinger+time.Second {
		t.Fatalf("the connection was held %v after the close, want about %v", waited, closeLinger)
	}
	// The connection is closed: the peer reads its end.
	peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := peer.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the peer read %d bytes and %v, want the connection's end", n, err)
	}
}
