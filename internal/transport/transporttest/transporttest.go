// Package transporttest is the conformance suite every transport passes:
// data integrity over many concurrent streams, half-close, deadlines, close
// propagation, the cap on incoming streams and per-stream backpressure.
package transporttest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/transport"
)

// Pair returns two connected sessions: the dialing and the accepting side.
// MaxIncoming is the cap on incoming streams the accepting side was given.
type Pair func(t *testing.T) (client, server transport.Session)

// Options describes the transport under test.
type Options struct {
	// MaxIncoming is the cap on incoming streams that Pair configured on
	// the server side (0: the cap test is skipped).
	MaxIncoming int
}

// Run runs the suite against the sessions made by pair.
func Run(t *testing.T, pair Pair, opts Options) {
	t.Run("Integrity", func(t *testing.T) { testIntegrity(t, pair) })
	t.Run("HalfClose", func(t *testing.T) { testHalfClose(t, pair) })
	t.Run("Deadlines", func(t *testing.T) { testDeadlines(t, pair) })
	t.Run("CloseStream", func(t *testing.T) { testCloseStream(t, pair) })
	t.Run("CloseSession", func(t *testing.T) { testCloseSession(t, pair) })
	if opts.MaxIncoming > 0 {
		t.Run("StreamCap", func(t *testing.T) { testStreamCap(t, pair, opts.MaxIncoming) })
	}
	t.Run("Backpressure", func(t *testing.T) { testBackpressure(t, pair) })
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

// echo serves every stream of s by echoing it, half-closing after EOF.
func echo(t *testing.T, s transport.Session) {
	go func() {
		for {
			st, err := s.AcceptStream(context.Background())
			if err != nil {
				return
			}
			go func() {
				defer st.Close()
				io.Copy(st, st)
				st.CloseWrite()
			}()
		}
	}()
}

func testIntegrity(t *testing.T, pair Pair) {
	c, s := pair(t)
	echo(t, s)
	const streams = 50
	const size = 1 << 20
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := 0; i < streams; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := c.OpenStream(ctx(t))
			if err != nil {
				errs <- err
				return
			}
			defer st.Close()
			data := make([]byte, size)
			rnd := rand.New(rand.NewPCG(uint64(i), 1))
			for j := range data {
				data[j] = byte(rnd.Uint32())
			}
			want := sha256.Sum256(data)
			go func() {
				st.Write(data)
				st.CloseWrite()
			}()
			h := sha256.New()
			n, err := io.Copy(h, st)
			if err != nil {
				errs <- err
				return
			}
			if n != size || !bytes.Equal(h.Sum(nil), want[:]) {
				errs <- errors.New("echoed data differs")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func testHalfClose(t *testing.T, pair Pair) {
	c, s := pair(t)
	go func() {
		st, err := s.AcceptStream(context.Background())
		if err != nil {
			return
		}
		defer st.Close()
		got, _ := io.ReadAll(st) // until the client's CloseWrite
		st.Write([]byte("got " + string(got)))
		st.CloseWrite()
	}()
	st, err := c.OpenStream(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.Write([]byte("ping"))
	if err := st.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte("x")); err == nil {
		t.Fatal("write after CloseWrite succeeded")
	}
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	reply, err := io.ReadAll(st)
	if err != nil {
		t.Fatal(err)
	}
	if string(reply) != "got ping" {
		t.Fatalf("reply %q", reply)
	}
}

func testDeadlines(t *testing.T, pair Pair) {
	c, s := pair(t)
	st, peer := openPair(t, c, s)
	defer st.Close()
	defer peer.Close()
	st.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := st.Read(make([]byte, 1))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read past deadline: err = %v, want a timeout", err)
		}
	}
	// The stream still works once the deadline is lifted.
	st.SetReadDeadline(time.Time{})
	go peer.Write([]byte("y"))
	b := make([]byte, 1)
	if _, err := io.ReadFull(st, b); err != nil || b[0] != 'y' {
		t.Fatalf("read after deadline lifted: %q, %v", b, err)
	}
}

// openPair opens a stream from c, announces it with one byte ("x"), and
// returns it with the peer's end accepted on s.
func openPair(t *testing.T, c, s transport.Session) (st, peer transport.Stream) {
	t.Helper()
	accepted := make(chan transport.Stream, 1)
	go func() {
		st, err := s.AcceptStream(ctx(t))
		if err == nil {
			accepted <- st
		}
	}()
	st, err := c.OpenStream(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("x")) // some transports announce a stream with its first byte
	select {
	case peer = <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("stream not accepted")
	}
	return st, peer
}

func testCloseStream(t *testing.T, pair Pair) {
	c, s := pair(t)
	st, peer := openPair(t, c, s)
	defer peer.Close()
	st.Close()
	peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(peer)
	if err != nil {
		t.Fatalf("peer read after close: %v", err)
	}
	if string(b) != "x" {
		t.Fatalf("peer read %q", b)
	}
	if _, err := st.Write([]byte("y")); err == nil {
		t.Fatal("write on closed stream succeeded")
	}
}

func testCloseSession(t *testing.T, pair Pair) {
	c, s := pair(t)
	_, peer := openPair(t, c, s)
	c.Close()
	select {
	case <-s.Context().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("peer session did not end after Close")
	}
	peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(peer); err == nil {
		// EOF is fine too, as long as the read ended.
	}
	if _, err := c.OpenStream(ctx(t)); err == nil {
		t.Fatal("OpenStream on a closed session succeeded")
	}
	if _, err := s.AcceptStream(ctx(t)); err == nil {
		t.Fatal("AcceptStream on an ended session succeeded")
	}
}

func testStreamCap(t *testing.T, pair Pair, limit int) {
	c, s := pair(t)
	go func() {
		for {
			st, err := s.AcceptStream(context.Background())
			if err != nil {
				return
			}
			// Held open until the client closes it.
			go func() {
				defer st.Close()
				st.Write([]byte{1})
				io.Copy(io.Discard, st)
			}()
		}
	}()
	var open []transport.Stream
	defer func() {
		for _, st := range open {
			st.Close()
		}
	}()
	for i := 0; i < limit; i++ {
		st, err := c.OpenStream(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		st.Write([]byte{0})
		b := make([]byte, 1)
		st.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(st, b); err != nil {
			t.Fatalf("stream %d under the cap: %v", i, err)
		}
		open = append(open, st)
	}
	// One more is refused: it ends without data.
	st, err := c.OpenStream(ctx(t))
	if err == nil {
		st.Write([]byte{0})
		st.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _ := st.Read(make([]byte, 1))
		st.Close()
		if n != 0 {
			t.Fatal("stream above the cap was served")
		}
	}
	// The session survives, and closing one stream makes room.
	select {
	case <-c.Context().Done():
		t.Fatal("session ended when the cap was hit")
	default:
	}
	open[0].Close()
	open = open[1:]
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := c.OpenStream(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		st.Write([]byte{0})
		st.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _ := st.Read(make([]byte, 1))
		if n == 1 {
			open = append(open, st)
			break
		}
		st.Close()
		if time.Now().After(deadline) {
			t.Fatal("no room after closing a stream")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testBackpressure(t *testing.T, pair Pair) {
	c, s := pair(t)
	// The server writes without end on every stream. The client never
	// reads the first stream; the second must still carry 8 MiB.
	go func() {
		for {
			st, err := s.AcceptStream(context.Background())
			if err != nil {
				return
			}
			go func() {
				defer st.Close()
				buf := make([]byte, 32<<10)
				for {
					if _, err := st.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	stalled, err := c.OpenStream(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	stalled.Write([]byte{0})
	time.Sleep(200 * time.Millisecond) // let it fill its window
	live, err := c.OpenStream(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	live.Write([]byte{0})
	live.SetReadDeadline(time.Now().Add(15 * time.Second))
	if n, err := io.CopyN(io.Discard, live, 8<<20); err != nil {
		t.Fatalf("second stream stalled behind the first after %d bytes: %v", n, err)
	}
}
