package mux

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

// TestWriterYieldsOnlyWhenBusy: a writer yields to the goroutines ready to
// run before its first write only when the session is busy: another
// stream's frames joined the last writer's turn, or that turn began less
// than busyWithin ago. A quiet session's writer writes at once.
func TestWriterYieldsOnlyWhenBusy(t *testing.T) {
	gate := make(chan chan struct{}, 1) // a release channel: the next write waits on it
	entered := make(chan struct{}, 1)
	cfg := Config{Hold: func() {
		select {
		case release := <-gate:
			entered <- struct{}{}
			<-release
		default:
		}
	}}
	c, s := tlsConns(t)
	cs, ss := Client(c, cfg), Server(s, Config{})
	defer cs.Close()
	defer ss.Close()
	echoServer(ours{ss})
	open := func() *Stream {
		st, err := cs.OpenStream(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	a, b := open(), open()
	msg := []byte("0123456789")
	echo := func(st *Stream) {
		t.Helper()
		if _, err := st.Write(msg); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(st, buf); err != nil {
			t.Fatal(err)
		}
	}
	// The last turn began long ago.
	quiet := func() {
		cs.wmu.Lock()
		cs.lastTurn -= int64(time.Second)
		cs.wmu.Unlock()
	}
	echo(a)
	echo(b)
	// Each side pings when it starts, and each answers the other's ping
	// from a writer goroutine of its own, which on a loaded machine may
	// still be in its turn when the next write comes, and take that write
	// in. The turns below must be the test's alone: wait until both
	// pings are answered and no writer is active, then start afresh.
	if err := testutil.Poll(10*time.Second, func() error {
		if cs.RTT() == 0 || ss.RTT() == 0 {
			return errors.New("the start-up pings are not answered yet")
		}
		cs.wmu.Lock()
		defer cs.wmu.Unlock()
		if cs.writing {
			return errors.New("a writer is still in its turn")
		}
		cs.joined = 0
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	y0 := cs.yields.Load()
	for range 20 {
		quiet()
		echo(a)
	}
	if n := cs.yields.Load() - y0; n != 0 {
		t.Fatalf("a quiet session's writer yielded %d times in 20 turns", n)
	}

	// A turn right after another: the session is busy. The write has to
	// come within busyWithin of the mark, which a loaded machine may miss
	// once in a while; one of a few tries must see it.
	busyByTime := false
	for range 10 {
		y := cs.yields.Load()
		cs.wmu.Lock()
		cs.lastTurn = monoNow()
		cs.wmu.Unlock()
		echo(a)
		if cs.yields.Load() > y {
			busyByTime = true
			break
		}
	}
	if !busyByTime {
		t.Fatal("a writer right after another did not yield")
	}

	// Another stream's frame joins a turn while its write is held: the
	// next turn yields even though it comes long after.
	quiet()
	release := make(chan struct{})
	gate <- release
	done := make(chan error, 1)
	go func() {
		_, err := a.Write(msg)
		done <- err
	}()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the write never reached the connection")
	}
	if _, err := b.Write(msg); err != nil { // queued behind the held write
		t.Fatal(err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	for _, st := range []*Stream{a, b} {
		if _, err := io.ReadFull(st, buf); err != nil {
			t.Fatal(err)
		}
	}
	y := cs.yields.Load()
	quiet()
	echo(a)
	if cs.yields.Load() != y+1 {
		t.Fatal("the turn after one that others joined did not yield")
	}
	// That turn had nobody join it: the next, long after, does not yield.
	quiet()
	echo(a)
	if cs.yields.Load() != y+1 {
		t.Fatal("a turn long after a lone one yielded")
	}
}
