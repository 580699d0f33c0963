//go:build unix

package mux

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

// openPair opens a stream on cs and accepts it on ss.
func openPair(t *testing.T, cs, ss *Session) (opened, accepted *Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	o, err := cs.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.Write([]byte{0}); err != nil {
		t.Fatal(err)
	}
	a, err := ss.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(a, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	a.SetReadDeadline(time.Time{})
	return o, a
}

// relayToSink copies st to sink as the relay does, with sink registered:
// Read, then a blocking Write. It returns the bytes that went through Read.
func relayToSink(st *Stream, sink *net.TCPConn) <-chan int64 {
	st.SetSink(sink)
	done := make(chan int64, 1)
	go func() {
		var viaRead int64
		buf := make([]byte, 32<<10)
		for {
			n, err := st.Read(buf)
			if n > 0 {
				if _, werr := sink.Write(buf[:n]); werr != nil {
					st.Reset()
					break
				}
				viaRead += int64(n)
			}
			if err != nil {
				break
			}
		}
		st.SetSink(nil)
		done <- viaRead
	}()
	return done
}

// A sink whose socket buffer is full: what it does not take is buffered
// and reaches it through the reader, in order; once the reader has caught
// up, write-through resumes; the counts add up exactly.
func TestWriteThroughKeepsOrder(t *testing.T) {
	cs, ss := pair(t, Config{})
	o, a := openPair(t, cs, ss)
	sink, far := testutil.LoopbackPair(t)
	sink.SetWriteBuffer(32 << 10)
	far.SetReadBuffer(32 << 10)
	relayed := relayToSink(a, sink)

	// Nobody reads far: the socket buffers fill and data piles up in the
	// stream's receive buffer.
	first := randBytes(1, 1<<20)
	werr := make(chan error, 1)
	go func() {
		_, err := o.Write(first)
		werr <- err
	}()
	err := testutil.Poll(10*time.Second, func() error {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.buffered == 0 {
			return errors.New("nothing buffered")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the stream never buffered: %v", err)
	}
	if a.SinkWritten() == 0 {
		t.Fatal("nothing was written through before the sink filled")
	}
	far.SetReadDeadline(time.Now().Add(30 * time.Second))
	got := make([]byte, len(first))
	if _, err := io.ReadFull(far, got); err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, first) {
		t.Fatal("the sink received the bytes out of order")
	}

	// The reader has caught up: new data goes straight to the sink, once
	// the relay is back in Read (the far end can have every byte while
	// the relay still returns from its last write to the sink).
	if err := testutil.Poll(10*time.Second, func() error {
		a.mu.Lock()
		defer a.mu.Unlock()
		if !a.canWriteThroughLocked() {
			return errors.New("the relay is not back in Read")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	before := a.SinkWritten()
	second := randBytes(2, 64<<10)
	if _, err := o.Write(second); err != nil {
		t.Fatal(err)
	}
	got = make([]byte, len(second))
	if _, err := io.ReadFull(far, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, second) {
		t.Fatal("second batch differs")
	}
	if a.SinkWritten() == before {
		t.Fatal("write-through did not resume once the buffer was drained")
	}

	o.CloseWrite()
	var viaRead int64
	select {
	case viaRead = <-relayed:
	case <-time.After(10 * time.Second):
		t.Fatal("reader did not see EOF")
	}
	if total := viaRead + a.SinkWritten(); total != int64(len(first)+len(second)) {
		t.Fatalf("read %d + written through %d = %d bytes, want %d", viaRead, a.SinkWritten(), total, len(first)+len(second))
	}
	if viaRead == 0 {
		t.Fatal("nothing went through the buffer: the sink never filled")
	}
}

// A sink that fails is dropped: the data is buffered for the reader, whose
// own write meets the error and resets the stream; the session goes on.
func TestWriteThroughSinkError(t *testing.T) {
	cs, ss := pair(t, Config{})
	o, a := openPair(t, cs, ss)
	sink, _ := testutil.LoopbackPair(t)
	sink.CloseWrite() // writes fail with EPIPE
	relayed := relayToSink(a, sink)
	if _, err := o.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	o.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := o.Read(make([]byte, 1)); !errors.Is(err, ErrStreamReset) {
		t.Fatalf("opener's read: %v, want a reset", err)
	}
	select {
	case <-relayed:
	case <-time.After(10 * time.Second):
		t.Fatal("reader did not end")
	}
	if n := a.SinkWritten(); n != 0 {
		t.Fatalf("written through a failed sink: %d", n)
	}
	if ss.IsClosed() || cs.IsClosed() {
		t.Fatal("a sink error ended the session")
	}
	o2, a2 := openPair(t, cs, ss)
	o2.Close()
	a2.Close()
}
