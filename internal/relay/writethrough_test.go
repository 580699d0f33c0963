//go:build unix

package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/transport/mux"
)

// A stream relayed to a TCP socket writes through to it: both directions
// arrive intact and Pipe's counts include the bytes written through.
func TestPipeWriteThroughCounts(t *testing.T) {
	verifyNoLeaks(t)
	const toA, toB = 8 << 20, 1 << 20
	peerA, a := connPair(t, kindTCP)
	peerB, b := connPair(t, kindStream)
	sk, ok := b.(sinker)
	if !ok {
		t.Fatalf("%T cannot write through", b)
	}
	res := startPipe(t, a, b)
	deadline := time.Now().Add(ioWait)
	peerA.SetDeadline(deadline)
	peerB.SetDeadline(deadline)

	sa, sb, ga, gb := swap(t, peerA, peerB, toA, toB)
	if gb != sa || ga != sb {
		t.Fatal("received data differs from sent")
	}
	through := sk.SinkWritten()
	if through == 0 {
		t.Error("nothing was written through to the TCP socket")
	}
	t.Logf("%d of %d bytes written through", through, toA)
	peerA.(*net.TCPConn).CloseWrite()
	peerB.(interface{ CloseWrite() error }).CloseWrite()
	r := pipeDone(t, res)
	if r.aToB != toB || r.bToA != toA {
		t.Errorf("Pipe counts = %d, %d; want %d, %d", r.aToB, r.bToA, toB, toA)
	}
	if r.err != nil {
		t.Errorf("Pipe error = %v; want nil", r.err)
	}
}

// A sink that cannot be written ends the stream as the relay's own write
// error does: Pipe reports the write error and the stream's peer sees a
// reset, not EOF.
func TestPipeWriteThroughSinkError(t *testing.T) {
	verifyNoLeaks(t)
	_, a := connPair(t, kindTCP)
	peerB, b := connPair(t, kindStream)
	if err := a.(*net.TCPConn).CloseWrite(); err != nil { // writes to a fail
		t.Fatal(err)
	}
	res := startPipe(t, a, b)
	peerB.SetDeadline(time.Now().Add(wait))
	if _, err := peerB.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	_, err := peerB.Read(make([]byte, 1))
	if !errors.Is(err, mux.ErrStreamReset) {
		t.Fatalf("stream peer read: %v; want a reset", err)
	}
	r := pipeDone(t, res)
	if r.err == nil || errors.Is(r.err, mux.ErrStreamReset) || errors.Is(r.err, io.EOF) || errors.Is(r.err, os.ErrDeadlineExceeded) {
		t.Errorf("Pipe error = %v; want the socket's write error", r.err)
	}
	if r.bToA != 0 {
		t.Errorf("bytes to a = %d; want 0", r.bToA)
	}
}
