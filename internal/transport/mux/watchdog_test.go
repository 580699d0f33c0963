package mux

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

// TestWriteWatchdogEndsStuckWrite: a connection that takes no write (its
// peer stopped reading) ends the session with ErrWriteTimeout once a
// write has waited WriteTimeout.
func TestWriteWatchdogEndsStuckWrite(t *testing.T) {
	const wt = 200 * time.Millisecond
	a, b := net.Pipe() // a write waits until the other end reads: b never does
	defer b.Close()
	start := time.Now()
	s := Client(a, Config{WriteTimeout: wt}) // its first ping waits for ever
	defer s.Close()
	select {
	case <-s.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("a write that cannot finish did not end the session")
	}
	if !errors.Is(s.Err(), ErrWriteTimeout) {
		t.Fatalf("session ended with %v, want %v", s.Err(), ErrWriteTimeout)
	}
	if took := time.Since(start); took < wt {
		t.Errorf("ended %v after the write began, before WriteTimeout (%v)", took, wt)
	}
}

// TestWriteWatchdogIdle: once writes have stopped the watchdog disarms,
// and an idle session is not ended; the next write arms it again.
func TestWriteWatchdogIdle(t *testing.T) {
	const wt = 100 * time.Millisecond
	cs, ss := pair(t, Config{WriteTimeout: wt})
	idleTimer := func() error {
		if cs.wtArmed.Load() {
			return errors.New("the write watchdog is still armed")
		}
		return nil
	}
	if err := testutil.Poll(10*time.Second, idleTimer); err != nil {
		t.Fatal(err)
	}
	for round := range 3 {
		st, err := cs.OpenStream(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Write(make([]byte, 64<<10)); err != nil {
			t.Fatal(err)
		}
		peer, err := ss.AcceptStream(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := readN(peer, 64<<10); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		st.Close()
		peer.Close()
		if err := testutil.Poll(10*time.Second, idleTimer); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if cs.IsClosed() {
			t.Fatalf("round %d: an idle session ended: %v", round, cs.Err())
		}
	}
}

// readN reads n bytes from c.
func readN(c net.Conn, n int) (int, error) {
	buf := make([]byte, 32<<10)
	got := 0
	for got < n {
		k, err := c.Read(buf)
		got += k
		if err != nil {
			return got, err
		}
	}
	return got, nil
}
