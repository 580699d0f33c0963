package relay

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// countReads counts copyRaw's reads, and those that found the socket
// empty, until the test ends. Only for tests that are not parallel.
func countReads(t *testing.T) (reads, empty *atomic.Int64) {
	reads, empty = new(atomic.Int64), new(atomic.Int64)
	testHookRead = func(n int, err error) {
		reads.Add(1)
		if err == syscall.EAGAIN {
			empty.Add(1)
		}
	}
	t.Cleanup(func() { testHookRead = nil })
	return reads, empty
}

// onlyWrite hides a destination's TryWrite, so that copyRaw passes every
// read on outside its readiness callback.
type onlyWrite struct{ io.Writer }

// startCopy copies a TCP socket to a stream with copyConn, the stream's
// TryWrite hidden if hideTry, and returns the socket's peer, the stream's
// peer and where the copy's error arrives.
func startCopy(tb testing.TB, hideTry bool) (peerA, peerB net.Conn, done <-chan error) {
	tb.Helper()
	peerA, a := connPair(tb, kindTCP)
	peerB, b := connPair(tb, kindStream)
	if _, ok := b.(tryWriter); !ok {
		tb.Fatalf("%T has no TryWrite", b)
	}
	var dst io.Writer = b
	if hideTry {
		dst = onlyWrite{b}
	}
	ch := make(chan error, 1)
	go func() {
		_, err := copyConn(dst, a, nil)
		ch <- err
	}()
	return peerA, peerB, ch
}

// A TCP socket copied to a stream that can take writes without waiting
// is read once per message: the read that would find the socket empty
// after each one is not made. The same copy with TryWrite hidden makes it.
// Both copies deliver every byte in order.
func TestTryWriteSkipsEmptyReads(t *testing.T) {
	verifyNoLeaks(t)
	const rounds = 300
	reads, empty := countReads(t)
	perRound := map[string]float64{}
	emptyPerRound := map[string]float64{}
	for _, mode := range []string{"trywrite", "write"} {
		peerA, peerB, done := startCopy(t, mode == "write")
		peerA.SetDeadline(time.Now().Add(ioWait))
		peerB.SetDeadline(time.Now().Add(ioWait))
		msg := make([]byte, 100)
		got := make([]byte, len(msg))
		r0, e0 := reads.Load(), empty.Load()
		for i := range rounds {
			copy(msg, fmt.Sprintf("message %d of %s", i, mode))
			if _, err := peerA.Write(msg); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(peerB, got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("%s: round %d read %q; want %q", mode, i, got, msg)
			}
		}
		perRound[mode] = float64(reads.Load()-r0) / rounds
		emptyPerRound[mode] = float64(empty.Load()-e0) / rounds
		peerA.(*net.TCPConn).CloseWrite()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("%s: copy ended with %v; want EOF", mode, err)
			}
		case <-time.After(wait):
			t.Fatalf("%s: copy did not end at EOF", mode)
		}
	}
	t.Logf("reads per message: %.2f with TryWrite (%.2f finding nothing), %.2f without (%.2f)",
		perRound["trywrite"], emptyPerRound["trywrite"], perRound["write"], emptyPerRound["write"])
	// Without TryWrite every message costs a read of it and one that
	// finds the socket empty; with it, the read of the message alone
	// (a rare wake-up may still find nothing).
	if emptyPerRound["write"] < 0.9 {
		t.Errorf("without TryWrite, %.2f reads per message found the socket empty; want about 1 (the test no longer sees the cost)", emptyPerRound["write"])
	}
	if emptyPerRound["trywrite"] > 0.1 || perRound["trywrite"] > 1.1 {
		t.Errorf("with TryWrite, %.2f reads per message, %.2f of them finding the socket empty; want 1 and 0",
			perRound["trywrite"], emptyPerRound["trywrite"])
	}
}

// A message followed at once by the peer's FIN, or by a reset, ends the
// copy, which was waiting for readiness: one readiness announces both, and
// the read that takes the message also takes the FIN (or leaves the reset
// behind it), so no readiness will announce them again. The kernel says a
// FIN is left (TCP_INQ): the FIN rounds run with the read check out of
// reach (a minute), so that it cannot end them in its place. A reset is
// found by the read check, which the reset rounds make 100 ms.
func TestTryWriteSeesPendingEnd(t *testing.T) {
	verifyNoLeaks(t)
	defer func(d time.Duration) { checkEvery = d }(checkEvery)
	for _, end := range []string{"fin", "reset"} {
		checkEvery = 100 * time.Millisecond
		if end == "fin" {
			checkEvery = time.Minute
		}
		for round := range 10 {
			pendingEnd(t, end, round)
		}
	}
}

func pendingEnd(t *testing.T, end string, round int) {
	peerA, peerB, done := startCopy(t, false)
	peerB.SetReadDeadline(time.Now().Add(wait))
	// The first message gets through: the copy then waits for readiness.
	first := []byte("first")
	if _, err := peerA.Write(first); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(peerB, make([]byte, len(first))); err != nil {
		t.Fatal(err)
	}
	msg := []byte("the last words of " + end)
	if _, err := peerA.Write(msg); err != nil {
		t.Fatal(err)
	}
	if end == "fin" {
		peerA.(*net.TCPConn).CloseWrite()
	} else {
		peerA.(*net.TCPConn).SetLinger(0)
		peerA.Close()
	}
	select {
	case err := <-done:
		if end == "fin" && err != nil {
			t.Errorf("fin, round %d: copy ended with %v; want EOF", round, err)
		}
		if end == "reset" && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("reset, round %d: copy ended with %v; want a reset", round, err)
		}
	case <-time.After(wait):
		// The test's cleanup closes the socket, which ends the copy.
		t.Fatalf("%s, round %d: the copy did not end: the end behind the message was never read", end, round)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(peerB, got); err != nil || !bytes.Equal(got, msg) {
		t.Errorf("%s, round %d: the stream's peer read %q, %v; want %q", end, round, got, err, msg)
	}
}

// A relay whose read check passes again and again while messages go both
// ways (here every millisecond) loses nothing and ends cleanly, with or
// without a half-close bound.
func TestReadCheckWhileBusy(t *testing.T) {
	verifyNoLeaks(t)
	defer func(d time.Duration) { checkEvery = d }(checkEvery)
	checkEvery = time.Millisecond
	for _, o := range []Options{{}, {HalfCloseTimeout: 10 * time.Second}} {
		peerA, a := connPair(t, kindTCP)
		peerB, b := connPair(t, kindStream)
		res := startPipeWith(t, a, b, o)
		peerA.SetDeadline(time.Now().Add(ioWait))
		peerB.SetDeadline(time.Now().Add(ioWait))
		const rounds = 300
		msg := make([]byte, 64)
		got := make([]byte, len(msg))
		for i := range rounds {
			copy(msg, fmt.Sprintf("round %d, bound %v", i, o.HalfCloseTimeout))
			if _, err := peerA.Write(msg); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(peerB, got); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("round %d: the stream's peer read %q, %v; want %q", i, got, err, msg)
			}
			if _, err := peerB.Write(msg); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(peerA, got); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("round %d: the socket's peer read %q, %v; want %q", i, got, err, msg)
			}
		}
		peerA.(*net.TCPConn).CloseWrite()
		peerB.(interface{ CloseWrite() error }).CloseWrite()
		r := pipeDone(t, res)
		if r.err != nil || r.aToB != rounds*64 || r.bToA != rounds*64 {
			t.Errorf("bound %v: Pipe = %d, %d, %v; want %d both ways and no error", o.HalfCloseTimeout, r.aToB, r.bToA, r.err, rounds*64)
		}
	}
}

// The read check, set while the relay was open both ways, gives way to the
// half-close bound once the other direction ends: the relay ends at the
// bound, neither at the check's deadline nor never.
func TestReadCheckGivesWayToBound(t *testing.T) {
	verifyNoLeaks(t)
	defer func(d time.Duration) { checkEvery = d }(checkEvery)
	checkEvery = 50 * time.Millisecond
	const bound = 600 * time.Millisecond
	peerA, a := connPair(t, kindTCP)
	peerB, b := connPair(t, kindStream)
	res := startPipeWith(t, a, b, Options{HalfCloseTimeout: bound})
	peerB.SetDeadline(time.Now().Add(ioWait))
	if _, err := peerA.Write([]byte("armed")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(peerB, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	// The stream's side ends: the socket's direction is bounded.
	start := time.Now()
	if err := peerB.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	r := pipeDone(t, res)
	took := time.Since(start)
	if !errors.Is(r.err, ErrHalfCloseTimeout) {
		t.Fatalf("PipeWith error = %v after %v; want ErrHalfCloseTimeout", r.err, took)
	}
	if took < bound {
		t.Errorf("the relay ended %v after the half-close; the bound is %v", took, bound)
	}
}

// BenchmarkCopyBulk copies 64 MiB per iteration from a TCP socket to a
// stream, as the gateway does a visitor's upload: with the stream's
// TryWrite, and with it hidden (every read passed on outside the
// callback).
func BenchmarkCopyBulk(b *testing.B) {
	for _, mode := range []string{"trywrite", "write"} {
		b.Run(mode, func(b *testing.B) {
			const size = 64 << 20
			peerA, peerB, done := startCopy(b, mode == "write")
			chunk := make([]byte, 256<<10)
			sink := make([]byte, 256<<10)
			b.SetBytes(size)
			b.ResetTimer()
			for range b.N {
				werr := make(chan error, 1)
				go func() {
					for sent := 0; sent < size; sent += len(chunk) {
						if _, err := peerA.Write(chunk); err != nil {
							werr <- err
							return
						}
					}
					werr <- nil
				}()
				for got := 0; got < size; {
					n, err := peerB.Read(sink)
					if err != nil {
						b.Fatal(err)
					}
					got += n
				}
				if err := <-werr; err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			peerA.(*net.TCPConn).CloseWrite()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		})
	}
}
