package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/tlsmux"
)

// streamPair returns the two ends of one stream of a tlsmux session over
// loopback TCP, closed with the sessions at the end of the test.
func streamPair(t testing.TB) (peer, end net.Conn) {
	t.Helper()
	dialed, accepted := dialAccept(t, listen(t, "tcp"))
	cs, err := tlsmux.New(dialed, tls.ConnectionState{}, true, transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ss, err := tlsmux.New(accepted, tls.ConnectionState{}, false, transport.Config{})
	if err != nil {
		cs.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close(); ss.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	p, err := cs.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The peer's stream exists for the acceptor once something is sent.
	if _, err := p.Write([]byte{0}); err != nil {
		t.Fatal(err)
	}
	e, err := ss.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e.SetReadDeadline(time.Now().Add(wait))
	if _, err := io.ReadFull(e, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	e.SetReadDeadline(time.Time{})
	return p, e
}

// endWrite ends what c sends: CloseWrite where c has it, else Close.
func endWrite(t testing.TB, c net.Conn) {
	t.Helper()
	var err error
	if cw, ok := c.(closeWriter); ok {
		err = cw.CloseWrite()
	} else {
		err = c.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
}

// expectEnded fails t unless c's peer ended the connection: a read gives
// EOF or an error that is not c's own deadline.
func expectEnded(t testing.TB, name string, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(wait))
	_, err := io.Copy(io.Discard, c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("%s: connection still open %v after the relay ended", name, wait)
	}
}

// halfClosed sets up peerC <-> c ==PipeWith== s <-> peerS, sends a message
// from peerC and half-closes it, and checks that peerS receives the message
// and its end. The relay is then half-closed: only peerS -> peerC is open.
func halfClosed(t *testing.T, kc, ks connKind, o Options) (peerC, peerS net.Conn, res <-chan pipeResult) {
	t.Helper()
	peerC, c := connPair(t, kc)
	peerS, s := connPair(t, ks)
	res = startPipeWith(t, c, s, o)
	deadline := time.Now().Add(wait)
	peerC.SetDeadline(deadline)
	peerS.SetDeadline(deadline)
	if _, err := peerC.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	endWrite(t, peerC)
	if got := readAllBounded(t, peerS); string(got) != "bye" {
		t.Fatalf("silent side got %q; want \"bye\"", got)
	}
	return peerC, peerS, res
}

// kindPairs are the connection kinds the half-close bound is checked over:
// the closer's kind, then the other side's. A pipe has no CloseWrite: its
// relayed end is closed, which half-closes the relay all the same.
var kindPairs = []struct{ closer, other connKind }{
	{kindTCP, kindTCP},
	{kindTCP, kindUnix},
	{kindUnix, kindTCP},
	{kindTCP, kindStream},
	{kindStream, kindTCP},
	{kindStream, kindStream},
	{kindPipe, kindTCP},
}

// A half-closed relay whose open direction carries nothing ends within the
// bound: both connections are aborted, and PipeWith says why.
func TestPipeHalfCloseTimeoutSilent(t *testing.T) {
	verifyNoLeaks(t) // after every subtest, which run in parallel
	const timeout = 200 * time.Millisecond
	for _, tc := range kindPairs {
		t.Run(fmt.Sprintf("%s-%s", tc.closer, tc.other), func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			peerC, peerS, res := halfClosed(t, tc.closer, tc.other, Options{HalfCloseTimeout: timeout})
			// peerS neither sends nor closes.
			r := pipeDone(t, res)
			t.Logf("relay ended %v after the start, error %v", time.Since(start), r.err)
			if !errors.Is(r.err, ErrHalfCloseTimeout) {
				t.Errorf("PipeWith error = %v; want ErrHalfCloseTimeout", r.err)
			}
			if r.aToB != 3 || r.bToA != 0 {
				t.Errorf("counts = %d, %d; want 3, 0", r.aToB, r.bToA)
			}
			expectEnded(t, "silent side", peerS)
			if tc.closer != kindPipe {
				expectEnded(t, "closer", peerC)
			}
		})
	}
}

// A half-closed relay whose open direction moves slowly, with gaps shorter
// than the bound but adding up to many times it, delivers everything and
// ends cleanly.
func TestPipeHalfCloseTimeoutSlowTraffic(t *testing.T) {
	verifyNoLeaks(t) // after every subtest, which run in parallel
	const (
		// The gaps leave room for a loaded machine to be late.
		timeout = 2 * time.Second
		gap     = timeout / 8
		pieces  = 12 // 3s of traffic
	)
	for _, tc := range kindPairs {
		if tc.closer == kindPipe {
			// A pipe's relayed end is closed at its EOF: nothing can flow
			// back to a pipe that half-closed, so there is no slow
			// traffic to check.
			continue
		}
		t.Run(fmt.Sprintf("%s-%s", tc.closer, tc.other), func(t *testing.T) {
			t.Parallel()
			peerC, peerS, res := halfClosed(t, tc.closer, tc.other, Options{HalfCloseTimeout: timeout})
			deadline := time.Now().Add(wait + pieces*gap)
			peerC.SetDeadline(deadline)
			peerS.SetDeadline(deadline)
			var want []byte
			werr := make(chan error, 1)
			msgs := make([][]byte, pieces)
			for i := range msgs {
				msgs[i] = []byte(fmt.Sprintf("piece %d;", i))
				want = append(want, msgs[i]...)
			}
			// A large piece as well: the bound is between reads, not on
			// the whole transfer.
			big := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
			want = append(want, big...)
			go func() {
				tick := time.NewTicker(gap) // paces the traffic; waits for nothing
				defer tick.Stop()
				for _, m := range msgs {
					<-tick.C
					if _, err := peerS.Write(m); err != nil {
						werr <- err
						return
					}
				}
				if _, err := peerS.Write(big); err != nil {
					werr <- err
					return
				}
				endWrite(t, peerS)
				werr <- nil
			}()
			got, rerr := io.ReadAll(peerC)
			if rerr != nil {
				r := pipeDone(t, res)
				t.Fatalf("closer read %d bytes, then %v; relay: %+v", len(got), rerr, r)
			}
			if err := <-werr; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("closer got %d bytes; want the %d sent", len(got), len(want))
			}
			r := pipeDone(t, res)
			if r.err != nil {
				t.Errorf("PipeWith error = %v; want nil", r.err)
			}
			if r.aToB != 3 || r.bToA != int64(len(want)) {
				t.Errorf("counts = %d, %d; want 3, %d", r.aToB, r.bToA, len(want))
			}
		})
	}
}

// A half-closed relay whose closer stops reading while the other side
// keeps sending ends within the bound too: the write blocked on the closer
// times out, and the sender's connection is aborted.
func TestPipeHalfCloseTimeoutStalledReader(t *testing.T) {
	verifyNoLeaks(t) // after every subtest, which run in parallel
	const timeout = 300 * time.Millisecond
	for _, tc := range kindPairs {
		if tc.closer == kindPipe {
			// A pipe's relayed end is closed at its EOF: nothing can flow
			// back to a pipe that half-closed, so there is no slow
			// traffic to check.
			continue
		}
		t.Run(fmt.Sprintf("%s-%s", tc.closer, tc.other), func(t *testing.T) {
			t.Parallel()
			_, peerS, res := halfClosed(t, tc.closer, tc.other, Options{HalfCloseTimeout: timeout})
			// peerC reads nothing more; peerS sends until it fails.
			werr := make(chan error, 1)
			go func() {
				chunk := make([]byte, 64<<10)
				for {
					if _, err := peerS.Write(chunk); err != nil {
						werr <- err // at the latest at peerS's deadline
						return
					}
				}
			}()
			r := pipeDone(t, res)
			if !errors.Is(r.err, ErrHalfCloseTimeout) {
				t.Errorf("PipeWith error = %v; want ErrHalfCloseTimeout", r.err)
			}
			if err := <-werr; errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("sender's writes went on until its own deadline: %v", err)
			}
		})
	}
}

// The bound applies only once a direction has ended: an idle relay open
// both ways stays open.
func TestPipeHalfCloseTimeoutNotHalfClosed(t *testing.T) {
	const timeout = 100 * time.Millisecond
	verifyNoLeaks(t)
	peerA, a := connPair(t, kindTCP)
	peerB, b := connPair(t, kindStream)
	res := startPipeWith(t, a, b, Options{HalfCloseTimeout: timeout})
	select {
	case r := <-res:
		t.Fatalf("an idle relay open both ways ended: %+v", r)
	case <-time.After(5 * timeout):
	}
	peerA.SetDeadline(time.Now().Add(wait))
	peerB.SetDeadline(time.Now().Add(wait))
	if _, err := peerA.Write([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(peerB, make([]byte, len("still here"))); err != nil {
		t.Fatal(err)
	}
	peerA.Close()
	peerB.Close()
	if r := pipeDone(t, res); r.err != nil {
		t.Errorf("PipeWith error = %v; want nil", r.err)
	}
}
