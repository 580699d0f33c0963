//go:build unix

package relay

import (
	"crypto/sha256"
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

	type out struct {
		sum [sha256.Size]byte
		err error
	}
	sentA, sentB := make(chan out, 1), make(chan out, 1)
	gotA, gotB := make(chan out, 1), make(chan out, 1)
	go func() { s, err := sendRandom(peerA, toB, 1); sentA <- out{s, err} }()
	go func() { s, err := sendRandom(peerB, toA, 2); sentB <- out{s, err} }()
	go func() { s, err := recvHash(peerA, toA); gotA <- out{s, err} }()
	go func() { s, err := recvHash(peerB, toB); gotB <- out{s, err} }()
	sa, sb, ga, gb := <-sentA, <-sentB, <-gotA, <-gotB
	for _, o := range []out{sa, sb, ga, gb} {
		if o.err != nil {
			t.Fatal(o.err)
		}
	}
	if gb.sum != sa.sum || ga.sum != sb.sum {
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
