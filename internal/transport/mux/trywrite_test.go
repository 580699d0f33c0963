package mux

import (
	"bytes"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"
)

// TryWrite writes all of p while the peer's window allows it, and nothing
// at all once it does not: what it refused is not queued, and a later
// Write comes next on the wire.
func TestTryWriteWindow(t *testing.T) {
	cs, ss := pair(t, Config{})
	o, a := openPair(t, cs, ss)
	a.SetReadDeadline(time.Now().Add(20 * time.Second))

	chunk := bytes.Repeat([]byte("w"), 32<<10)
	var sent int
	for i := 0; ; i++ {
		if i > 2*InitialWindow/len(chunk) {
			t.Fatalf("TryWrite took %d bytes, more than the window %d without a reader", sent, InitialWindow)
		}
		ok, err := o.TryWrite(chunk)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		sent += len(chunk)
	}
	if sent == 0 || sent > InitialWindow {
		t.Fatalf("TryWrite took %d bytes before refusing; want 1..%d (the initial window)", sent, InitialWindow)
	}
	// A single byte more than the window has left is refused too.
	o.mu.Lock()
	left := int(o.sendWindow)
	o.mu.Unlock()
	if ok, err := o.TryWrite(make([]byte, left+1)); ok || err != nil {
		t.Fatalf("TryWrite past the window = %v, %v; want false, nil", ok, err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := o.Write([]byte("end"))
		done <- err
	}()
	got := make([]byte, sent+3)
	if _, err := io.ReadFull(a, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:sent], bytes.Repeat([]byte("w"), sent)) || string(got[sent:]) != "end" {
		t.Fatalf("the peer read %q... ending %q; want %d bytes of w, then end", got[:8], got[sent:], sent)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TryWrite refuses, queueing nothing, while the session's pending output
// is at its cap (the writer stuck on the connection), and what it took
// arrives in order once the writer goes on.
func TestTryWriteRoom(t *testing.T) {
	var holding atomic.Bool
	held := make(chan struct{}, 1)
	release := make(chan struct{})
	cfg := Config{MaxPending: 64 << 10, Hold: func() {
		if holding.CompareAndSwap(true, false) {
			held <- struct{}{}
			<-release
		}
	}}
	// Only the client's writer is held: the server's may still be
	// writing its acknowledgement of a stream when the hold is armed.
	c, sc := tlsConns(t)
	cs, ss := Client(c, cfg), Server(sc, Config{MaxPending: cfg.MaxPending})
	t.Cleanup(func() { cs.Close(); ss.Close() })
	o1, a1 := openPair(t, cs, ss)
	o2, a2 := openPair(t, cs, ss)
	a1.SetReadDeadline(time.Now().Add(20 * time.Second))
	a2.SetReadDeadline(time.Now().Add(20 * time.Second))

	holding.Store(true)
	first := make(chan error, 1)
	go func() {
		_, err := o1.Write([]byte("x")) // becomes the writer, held
		first <- err
	}()
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the writer never reached the connection")
	}
	chunk := bytes.Repeat([]byte("r"), 16<<10)
	var sent int
	for i := 0; ; i++ {
		if i > 16 {
			close(release)
			t.Fatalf("TryWrite took %d bytes with the writer held; the cap is %d", sent, cfg.MaxPending)
		}
		ok, err := o2.TryWrite(chunk)
		if err != nil {
			close(release)
			t.Fatal(err)
		}
		if !ok {
			break
		}
		sent += len(chunk)
	}
	if sent < cfg.MaxPending-len(chunk) || sent > cfg.MaxPending+len(chunk) {
		close(release)
		t.Fatalf("TryWrite took %d bytes with the writer held; want about the cap %d", sent, cfg.MaxPending)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if _, err := o2.Write([]byte("end")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(a1, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, sent+3)
	if _, err := io.ReadFull(a2, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:sent], bytes.Repeat([]byte("r"), sent)) || string(got[sent:]) != "end" {
		t.Fatalf("the peer read %d bytes ending %q; want %d bytes of r, then end", len(got), got[sent:], sent)
	}
}

// TryWrite fails as Write does on a stream that cannot be written.
func TestTryWriteErrors(t *testing.T) {
	cs, ss := pair(t, Config{})
	o, _ := openPair(t, cs, ss)
	if err := o.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if ok, err := o.TryWrite([]byte("late")); ok || !errors.Is(err, ErrStreamClosed) {
		t.Fatalf("TryWrite after CloseWrite = %v, %v; want false, %v", ok, err, ErrStreamClosed)
	}
	o2, _ := openPair(t, cs, ss)
	o2.Reset()
	if ok, err := o2.TryWrite([]byte("late")); ok || !errors.Is(err, ErrStreamReset) {
		t.Fatalf("TryWrite after Reset = %v, %v; want false, %v", ok, err, ErrStreamReset)
	}
	o3, _ := openPair(t, cs, ss)
	cs.Close()
	if ok, err := o3.TryWrite([]byte("late")); ok || err == nil {
		t.Fatalf("TryWrite after the session closed = %v, %v; want false and an error", ok, err)
	}
}
