package mux

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"
)

// TestReadNowAndOnReadable: ReadNow returns what a Read would, and
// ErrWouldBlock where a Read would wait; OnReadable's function is called
// for data, for the peer's end of the stream and for the end of the
// session, and at once when registered on a stream that already has data.
func TestReadNowAndOnReadable(t *testing.T) {
	cs, ss := pair(t, Config{})
	ctx := context.Background()
	open := func() (*Stream, *Stream) {
		t.Helper()
		c, err := cs.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("x")); err != nil { // the SYN goes with it
			t.Fatal(err)
		}
		s, err := ss.AcceptStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return c, s
	}
	wake := func() (func(), <-chan struct{}) {
		ch := make(chan struct{}, 16)
		return func() { ch <- struct{}{} }, ch
	}
	woken := func(ch <-chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("not notified: %s", what)
		}
	}
	buf := make([]byte, 16)

	c, s := open()
	f, ch := wake()
	s.OnReadable(f) // "x" is there already
	woken(ch, "data there when registered")
	if n, err := s.ReadNow(buf); err != nil || string(buf[:n]) != "x" {
		t.Fatalf("ReadNow: %q, %v; want \"x\"", buf[:n], err)
	}
	if n, err := s.ReadNow(buf); n != 0 || !errors.Is(err, ErrWouldBlock) {
		t.Fatalf("ReadNow with nothing there: %d, %v; want ErrWouldBlock", n, err)
	}
	if _, err := c.Write([]byte("yz")); err != nil {
		t.Fatal(err)
	}
	woken(ch, "data")
	if n, err := s.ReadNow(buf); err != nil || string(buf[:n]) != "yz" {
		t.Fatalf("ReadNow: %q, %v; want \"yz\"", buf[:n], err)
	}
	c.CloseWrite()
	woken(ch, "the peer's end of the stream")
	if _, err := s.ReadNow(buf); !errors.Is(err, io.EOF) {
		t.Fatalf("ReadNow after the peer's end: %v, want EOF", err)
	}

	_, s2 := open()
	f2, ch2 := wake()
	s2.OnReadable(f2)
	woken(ch2, "the SYN's byte")
	s2.ReadNow(buf)
	cs.Close()
	woken(ch2, "the end of the session")
	for {
		_, err := s2.ReadNow(buf)
		if errors.Is(err, ErrWouldBlock) {
			woken(ch2, "the end of the session, still coming")
			continue
		}
		if !errors.Is(err, ErrSessionClosed) && !errors.Is(err, io.EOF) {
			t.Fatalf("ReadNow after the session ended: %v", err)
		}
		break
	}
}
