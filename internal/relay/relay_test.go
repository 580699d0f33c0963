package relay

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// wait bounds every wait in these tests; it is a limit, never a timing
// assertion.
const wait = 5 * time.Second

// ioWait bounds peer I/O that moves megabytes (slow under -race).
const ioWait = 60 * time.Second

// connKind names how a relayed connection is made: the relay's end of it is
// what Pipe gets, the peer is the far end the test drives.
type connKind string

const (
	kindTCP  connKind = "tcp"  // *net.TCPConn: copyRaw on unix
	kindPipe connKind = "pipe" // net.Pipe: copySmallFirst, no CloseWrite
	kindUnix connKind = "unix" // *net.UnixConn: copySmallFirst, with CloseWrite
	// kindStream is a multiplexed stream of a tlsmux session over TCP, as
	// the agent and the gateway relay: copySmallFirst, with CloseWrite.
	kindStream connKind = "stream"
)

// listen returns a listener closed at the end of the test.
func listen(t testing.TB, network string) net.Listener {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		dir, err := os.MkdirTemp("", "relay")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		addr = filepath.Join(dir, "s")
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		if network == "unix" {
			testutil.Unavailable(t, "unix sockets: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// dialAccept connects to ln and returns both ends; they are closed at the
// end of the test. The accepted end is the one whose peer is the dialed
// connection: a connection from anyone else (another test process that
// dials a loopback port it freed, which ln now holds) is closed and
// accepting goes on, so it cannot become the relay's end.
func dialAccept(t testing.TB, ln net.Listener) (dialed, accepted net.Conn) {
	t.Helper()
	d := net.Dialer{Timeout: wait}
	dialed, err := d.Dial(ln.Addr().Network(), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dialed.Close() })
	accepted, err = acceptFrom(t, ln, dialed.LocalAddr(), time.Now().Add(wait))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { accepted.Close() })
	return dialed, accepted
}

// acceptFrom accepts from ln until the connection dialed from peer (as
// the dialer saw its own address) arrives, closing others, or until the
// deadline.
func acceptFrom(t testing.TB, ln net.Listener, peer net.Addr, deadline time.Time) (net.Conn, error) {
	dl, ok := ln.(interface{ SetDeadline(time.Time) error })
	if !ok {
		return nil, fmt.Errorf("listener %T has no deadline", ln)
	}
	dl.SetDeadline(deadline)
	defer dl.SetDeadline(time.Time{})
	for {
		c, err := ln.Accept()
		if err != nil {
			return nil, fmt.Errorf("accept: %w", err)
		}
		// A Unix socket's dialing end is unnamed: nobody else can
		// reach a listener in the test's own directory.
		if c.RemoteAddr().Network() == "unix" || c.RemoteAddr().String() == peer.String() {
			return c, nil
		}
		t.Logf("closed a connection from %v, which the test did not dial", c.RemoteAddr())
		c.Close()
	}
}

// TestDialAcceptSkipsStrangers: a connection another process made to the
// test's listener first (it waits in the backlog ahead of the test's own)
// is not taken for the dialed connection's other end.
func TestDialAcceptSkipsStrangers(t *testing.T) {
	ln := listen(t, "tcp")
	stranger, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	dialed, accepted := dialAccept(t, ln)
	if accepted.RemoteAddr().String() != dialed.LocalAddr().String() {
		t.Fatalf("accepted the connection from %v, want the dialed one from %v", accepted.RemoteAddr(), dialed.LocalAddr())
	}
	stranger.SetReadDeadline(time.Now().Add(wait))
	if _, err := stranger.Read(make([]byte, 1)); err == nil {
		t.Error("the stranger's connection was not closed")
	}
}

// connPair returns a connected pair of the given kind: the peer (driven by
// the test) and the relay's end (given to Pipe).
func connPair(t testing.TB, kind connKind) (peer, end net.Conn) {
	t.Helper()
	switch kind {
	case kindPipe:
		peer, end = net.Pipe()
		t.Cleanup(func() { peer.Close(); end.Close() })
		return peer, end
	case kindTCP:
		return dialAccept(t, listen(t, "tcp"))
	case kindUnix:
		return dialAccept(t, listen(t, "unix"))
	case kindStream:
		return streamPair(t)
	}
	t.Fatalf("unknown kind %q", kind)
	return nil, nil
}

type pipeResult struct {
	aToB, bToA int64
	err        error
}

// startPipe runs Pipe(a, b) and returns the channel its result arrives on.
// If the test ends without taking the result, cleanup closes both ends and
// waits (bounded) for Pipe to return, so it never outlives the test.
func startPipe(t testing.TB, a, b net.Conn) <-chan pipeResult {
	t.Helper()
	return startPipeFunc(t, a, b, Pipe)
}

// startPipeWith is startPipe for PipeWith(a, b, o).
func startPipeWith(t testing.TB, a, b net.Conn, o Options) <-chan pipeResult {
	t.Helper()
	return startPipeFunc(t, a, b, func(a, b net.Conn) (int64, int64, error) { return PipeWith(a, b, o) })
}

func startPipeFunc(t testing.TB, a, b net.Conn, pipe func(a, b net.Conn) (int64, int64, error)) <-chan pipeResult {
	t.Helper()
	ch := make(chan pipeResult, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var r pipeResult
		r.aToB, r.bToA, r.err = pipe(a, b)
		ch <- r
	}()
	t.Cleanup(func() {
		a.Close()
		b.Close()
		select {
		case <-done:
		case <-time.After(wait):
			t.Errorf("Pipe did not return within %v of closing both ends", wait)
		}
	})
	return ch
}

// relayed sets up peerA <-> a ==Pipe== b <-> peerB.
func relayed(t testing.TB, ka, kb connKind) (peerA, peerB net.Conn, res <-chan pipeResult) {
	t.Helper()
	peerA, a := connPair(t, ka)
	peerB, b := connPair(t, kb)
	return peerA, peerB, startPipe(t, a, b)
}

func pipeDone(t testing.TB, res <-chan pipeResult) pipeResult {
	t.Helper()
	select {
	case r := <-res:
		return r
	case <-time.After(wait):
		t.Fatalf("Pipe did not return within %v", wait)
		return pipeResult{}
	}
}

// verifyNoLeaks checks, after every other cleanup of the test has run, that
// no goroutine is left. Call it first in a test.
func verifyNoLeaks(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

// sendRandom writes n pseudo-random bytes to c and returns their hash.
func sendRandom(c net.Conn, n int64, seed uint64) ([sha256.Size]byte, error) {
	h := sha256.New()
	var seedBytes [32]byte
	seedBytes[0] = byte(seed)
	src := io.LimitReader(rand.NewChaCha8(seedBytes), n)
	_, err := io.Copy(io.MultiWriter(c, h), src)
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum, err
}

// recvHash reads exactly n bytes from c and returns their hash.
func recvHash(c net.Conn, n int64) ([sha256.Size]byte, error) {
	h := sha256.New()
	_, err := io.CopyN(h, c, n)
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum, err
}

func TestPipeIntegrity(t *testing.T) {
	const size = 8 << 20
	for _, tc := range []struct{ a, b connKind }{
		{kindTCP, kindPipe},
		{kindPipe, kindTCP},
		{kindTCP, kindTCP},
		{kindTCP, kindUnix},
	} {
		t.Run(fmt.Sprintf("%s-%s", tc.a, tc.b), func(t *testing.T) {
			peerA, peerB, res := relayed(t, tc.a, tc.b)
			deadline := time.Now().Add(ioWait)
			peerA.SetDeadline(deadline)
			peerB.SetDeadline(deadline)

			sa, sb, ga, gb := swap(t, peerA, peerB, size, size)
			if gb != sa {
				t.Errorf("a→b: received data differs from sent (sha256 %x, sent %x)", gb, sa)
			}
			if ga != sb {
				t.Errorf("b→a: received data differs from sent (sha256 %x, sent %x)", ga, sb)
			}

			// Both peers have all their data: closing them ends the relay.
			peerA.Close()
			peerB.Close()
			r := pipeDone(t, res)
			if r.aToB != size || r.bToA != size {
				t.Errorf("Pipe counts = %d, %d; want %d, %d", r.aToB, r.bToA, size, size)
			}
			if r.err != nil {
				t.Errorf("Pipe error = %v; want nil", r.err)
			}
		})
	}
}

// readAllBounded reads c to EOF; the caller sets a deadline on c.
func readAllBounded(t *testing.T, c net.Conn) []byte {
	t.Helper()
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading to EOF: %v", err)
	}
	return b
}

func TestPipeHalfClose(t *testing.T) {
	for _, tc := range []struct{ a, b connKind }{
		{kindTCP, kindTCP},
		{kindTCP, kindUnix},
		{kindUnix, kindTCP},
	} {
		for _, aFirst := range []bool{true, false} {
			first := "a"
			if !aFirst {
				first = "b"
			}
			t.Run(fmt.Sprintf("%s-%s/%s-closes-first", tc.a, tc.b, first), func(t *testing.T) {
				verifyNoLeaks(t)
				peerA, peerB, res := relayed(t, tc.a, tc.b)
				deadline := time.Now().Add(wait)
				peerA.SetDeadline(deadline)
				peerB.SetDeadline(deadline)
				// closer sends a request and half-closes; replier reads it
				// to EOF and answers.
				closer, replier := peerA, peerB
				if !aFirst {
					closer, replier = peerB, peerA
				}
				request := []byte("request, then CloseWrite")
				reply := bytes.Repeat([]byte("reply after EOF "), 10000)

				if _, err := closer.Write(request); err != nil {
					t.Fatal(err)
				}
				if err := closer.(closeWriter).CloseWrite(); err != nil {
					t.Fatal(err)
				}
				if got := readAllBounded(t, replier); !bytes.Equal(got, request) {
					t.Fatalf("replier got %q; want %q", got, request)
				}
				// One direction has ended; the other is open, so Pipe
				// cannot have returned.
				select {
				case r := <-res:
					t.Fatalf("Pipe returned after one direction ended: %+v", r)
				default:
				}
				// The replier can still send, and the closer receives it all.
				werr := make(chan error, 1)
				go func() {
					_, err := replier.Write(reply)
					if err == nil {
						err = replier.(closeWriter).CloseWrite()
					}
					werr <- err
				}()
				if got := readAllBounded(t, closer); !bytes.Equal(got, reply) {
					t.Fatalf("closer got %d bytes; want the %d-byte reply", len(got), len(reply))
				}
				if err := <-werr; err != nil { // bounded by replier's deadline
					t.Fatal(err)
				}

				r := pipeDone(t, res)
				wantAB, wantBA := int64(len(request)), int64(len(reply))
				if !aFirst {
					wantAB, wantBA = wantBA, wantAB
				}
				if r.aToB != wantAB || r.bToA != wantBA {
					t.Errorf("Pipe counts = %d, %d; want %d, %d", r.aToB, r.bToA, wantAB, wantBA)
				}
				if r.err != nil {
					t.Errorf("Pipe error = %v; want nil", r.err)
				}
			})
		}
	}
}

// mixedSizes crosses smallSize and bufSize from both sides, so that
// copySmallFirst switches small→big→small repeatedly.
var mixedSizes = []int{
	1, 4095, 4096, 4097, 32 << 10, 100 << 10, 10,
	4096, 1, 8192, 3, 32<<10 + 1, 32<<10 - 1, 4096, 5000, 4095, 1 << 20, 7,
}

func TestPipeMixedSizes(t *testing.T) {
	// The writer's end is the source of the direction under test: pipe
	// (and unix) sources go through copySmallFirst, tcp through copyRaw.
	for _, tc := range []struct{ from, to connKind }{
		{kindPipe, kindTCP},
		{kindUnix, kindTCP},
		{kindTCP, kindPipe},
		{kindPipe, kindPipe},
	} {
		t.Run(fmt.Sprintf("%s-to-%s", tc.from, tc.to), func(t *testing.T) {
			writer, reader, res := relayed(t, tc.from, tc.to)
			deadline := time.Now().Add(ioWait)
			writer.SetDeadline(deadline)
			reader.SetDeadline(deadline)

			var want []byte
			rng := rand.New(rand.NewPCG(1, 2))
			var msgs [][]byte
			for _, n := range mixedSizes {
				m := make([]byte, n)
				for i := range m {
					m[i] = byte(rng.Uint32())
				}
				msgs = append(msgs, m)
				want = append(want, m...)
			}
			werr := make(chan error, 1)
			go func() {
				for _, m := range msgs {
					if _, err := writer.Write(m); err != nil {
						werr <- err
						return
					}
				}
				werr <- writer.Close() // EOF for the relay, relayed as EOF
			}()
			got, err := io.ReadAll(reader)
			if err != nil {
				t.Fatalf("reading to EOF after %d bytes: %v", len(got), err)
			}
			if err := <-werr; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				i := 0
				for i < len(got) && i < len(want) && got[i] == want[i] {
					i++
				}
				t.Fatalf("got %d bytes, want %d; first difference at offset %d", len(got), len(want), i)
			}
			reader.Close()
			r := pipeDone(t, res)
			if r.aToB != int64(len(want)) || r.bToA != 0 {
				t.Errorf("Pipe counts = %d, %d; want %d, 0", r.aToB, r.bToA, len(want))
			}
			if r.err != nil {
				t.Errorf("Pipe error = %v; want nil", r.err)
			}
		})
	}
}

// chunkReader returns data in reads of the given sizes (each cut to the
// caller's buffer, the rest returned by the next read), then err (io.EOF if
// nil), optionally together with the last data. It records the buffer
// length of every Read.
type chunkReader struct {
	data      []byte
	chunks    []int
	err       error
	eofOnLast bool
	bufLens   []int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	r.bufLens = append(r.bufLens, len(p))
	end := r.err
	if end == nil {
		end = io.EOF
	}
	if len(r.chunks) == 0 {
		return 0, end
	}
	n := min(r.chunks[0], len(p))
	if n == r.chunks[0] {
		r.chunks = r.chunks[1:]
	} else {
		r.chunks[0] -= n
	}
	copy(p, r.data[:n])
	r.data = r.data[n:]
	if len(r.chunks) == 0 && r.eofOnLast {
		return n, end
	}
	return n, nil
}

func total(xs []int) int {
	s := 0
	for _, x := range xs {
		s += x
	}
	return s
}

func TestCopySmallFirst(t *testing.T) {
	const S, B = smallSize, bufSize
	errBoom := errors.New("boom")
	for _, tc := range []struct {
		name      string
		chunks    []int
		err       error // the reader's final error; nil means io.EOF
		eofOnLast bool
		wantErr   error
		// wantBufs is the buffer length of every Read copySmallFirst
		// makes (nil: not checked): smallSize until a read fills it,
		// then bufSize until a read fits in smallSize.
		wantBufs []int
	}{
		{name: "empty", wantBufs: []int{S}},
		{name: "one byte", chunks: []int{1}, wantBufs: []int{S, S}},
		{name: "small pieces", chunks: []int{1, 10, 100, 4095}, wantBufs: []int{S, S, S, S, S}},
		{name: "exactly small", chunks: []int{S}, wantBufs: []int{S, B}},
		{name: "small then back", chunks: []int{S, 10, 7}, wantBufs: []int{S, B, S, S}},
		{name: "just over small", chunks: []int{S + 1}, wantBufs: []int{S, B, S}},
		{name: "bulk", chunks: []int{B, B, B}, wantBufs: []int{S, B, B, B, B}},
		{name: "big stays big above small", chunks: []int{S, S + 1, B - 1, S, 1}, wantBufs: []int{S, B, B, B, S, S}},
		{name: "mixed", chunks: []int{1, 4095, 4096, 4097, 32 << 10, 100 << 10, 10}},
		{name: "eof with data", chunks: []int{5, S, 3}, eofOnLast: true},
		{name: "eof with full small", chunks: []int{S}, eofOnLast: true},
		{name: "error after data", chunks: []int{100, S, 50}, err: errBoom, wantErr: errBoom},
		{name: "error with data", chunks: []int{100, 7}, err: errBoom, eofOnLast: true, wantErr: errBoom},
		{name: "unexpected EOF", chunks: []int{10}, err: io.ErrUnexpectedEOF, wantErr: io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := make([]byte, total(tc.chunks))
			for i := range data {
				data[i] = byte(i*7 + i/251)
			}
			r := &chunkReader{data: data, chunks: append([]int(nil), tc.chunks...), err: tc.err, eofOnLast: tc.eofOnLast}
			var dst bytes.Buffer
			n, err := copySmallFirst(&dst, r)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Errorf("error = %v; want %v", err, tc.wantErr)
			}
			if n != int64(len(data)) {
				t.Errorf("count = %d; want %d", n, len(data))
			}
			if !bytes.Equal(dst.Bytes(), data) {
				t.Errorf("copied %d bytes differing from the %d read", dst.Len(), len(data))
			}
			if tc.wantBufs != nil && fmt.Sprint(r.bufLens) != fmt.Sprint(tc.wantBufs) {
				t.Errorf("read buffer sizes = %v; want %v", r.bufLens, tc.wantBufs)
			}
		})
	}
}

// limitWriter accepts max bytes, then fails.
type limitWriter struct {
	max   int
	short bool // write what fits and return no error (a short write)
	buf   bytes.Buffer
}

var errWriterFull = errors.New("writer full")

func (w *limitWriter) Write(p []byte) (int, error) {
	room := w.max - w.buf.Len()
	if len(p) <= room {
		return w.buf.Write(p)
	}
	w.buf.Write(p[:room])
	if w.short {
		return room, nil
	}
	return room, errWriterFull
}

func TestCopySmallFirstWriteError(t *testing.T) {
	data := bytes.Repeat([]byte{1, 2, 3}, 20000)
	for _, tc := range []struct {
		name    string
		short   bool
		wantErr error
	}{
		{"error", false, errWriterFull},
		{"short write", true, io.ErrShortWrite},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &limitWriter{max: 10000, short: tc.short}
			n, err := copySmallFirst(w, bytes.NewReader(data))
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("error = %v; want %v", err, tc.wantErr)
			}
			if n != 10000 {
				t.Errorf("count = %d; want the 10000 written", n)
			}
		})
	}
}

func TestPipeReset(t *testing.T) {
	for _, tc := range []struct {
		name   string
		a, b   connKind
		resetA bool // reset peerA (else peerB)
		busy   bool // the other peer is streaming data towards the reset one
	}{
		{name: "tcp-tcp/reset-a", a: kindTCP, b: kindTCP, resetA: true},
		{name: "tcp-tcp/reset-b", a: kindTCP, b: kindTCP},
		{name: "tcp-tcp/reset-a-busy", a: kindTCP, b: kindTCP, resetA: true, busy: true},
		{name: "tcp-pipe/reset-a", a: kindTCP, b: kindPipe, resetA: true},
		{name: "tcp-pipe/reset-a-busy", a: kindTCP, b: kindPipe, resetA: true, busy: true},
		{name: "pipe-tcp/reset-b", a: kindPipe, b: kindTCP},
		{name: "unix-tcp/reset-b-busy", a: kindUnix, b: kindTCP, busy: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			verifyNoLeaks(t)
			peerA, peerB, res := relayed(t, tc.a, tc.b)
			victim, other := peerA, peerB
			if !tc.resetA {
				victim, other = peerB, peerA
			}
			other.SetDeadline(time.Now().Add(wait))

			// A round trip first, so the relay is known to be running.
			victim.SetDeadline(time.Now().Add(wait))
			if _, err := victim.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4)
			if _, err := io.ReadFull(other, buf); err != nil {
				t.Fatal(err)
			}

			werr := make(chan error, 1)
			if tc.busy {
				go func() {
					chunk := make([]byte, 16<<10)
					for {
						if _, err := other.Write(chunk); err != nil {
							werr <- err // ends at the latest at other's deadline
							return
						}
					}
				}()
			}

			tcp := victim.(*net.TCPConn)
			if err := tcp.SetLinger(0); err != nil {
				t.Fatal(err)
			}
			if err := tcp.Close(); err != nil {
				t.Fatal(err)
			}

			if tc.busy {
				if err := <-werr; errors.Is(err, os.ErrDeadlineExceeded) {
					t.Errorf("other peer's writes did not fail before its %v deadline", wait)
				}
			}
			// The other peer sees its connection end (reset, or EOF for
			// net.Pipe), not its deadline. Data it was sent is discarded.
			var err error
			for err == nil {
				_, err = other.Read(make([]byte, 32<<10))
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("other peer's connection still open %v after the reset", wait)
			}
			t.Logf("other peer read: %v", err)

			r := pipeDone(t, res)
			if r.err == nil {
				t.Errorf("Pipe error = nil; want the reset reported")
			} else {
				t.Logf("Pipe error: %v", r.err)
			}
		})
	}
}

func TestPipeClosedByCaller(t *testing.T) {
	verifyNoLeaks(t)
	// Closing a connection given to Pipe (as a caller would on shutdown)
	// ends both directions with no error, and both peers see the end.
	deadline := time.Now().Add(wait)
	pA, ra := connPair(t, kindTCP)
	rb, pB := connPair(t, kindTCP)
	pA.SetDeadline(deadline)
	pB.SetDeadline(deadline)
	res := startPipe(t, ra, rb)
	if _, err := pA.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(pB, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	ra.Close()
	r := pipeDone(t, res)
	if r.err != nil {
		t.Errorf("Pipe error = %v; want nil for a close by the caller", r.err)
	}
	if r.aToB != 1 || r.bToA != 0 {
		t.Errorf("Pipe counts = %d, %d; want 1, 0", r.aToB, r.bToA)
	}
	for name, p := range map[string]net.Conn{"a": pA, "b": pB} {
		if _, err := p.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("peer %s read after Pipe returned: %v; want EOF or reset", name, err)
		}
	}
	// Pipe closed both of its connections.
	if _, err := rb.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write to b after Pipe returned: %v; want net.ErrClosed", err)
	}
}

// TestIdleRelayMemory checks that idle relayed connections do not each keep
// a bufSize copy buffer, however busy they were before going idle.
//
// It opens n relays one after another, passes a message each way through
// every one (a bulk one first where the case says so, so that the big
// buffer is taken), leaves them all idle with their Pipe running, and
// compares runtime.MemStats.HeapInuse after with before. A relay that kept
// a bufSize buffer in each direction while idle would add 2×32 KiB = 64 KiB
// of heap; the old io.CopyBuffer relay did exactly that. The bound allowed,
// perRelay = 16 KiB, is half of one such buffer: it leaves room for what a
// relay legitimately holds (four sockets' netFDs and addresses, two Pipe
// goroutines' g structs, and for a stream source the smallSize buffer of
// copySmallFirst) while any direction keeping a 32 KiB buffer fails it.
//
// The measurement is robust because everything the test itself needs
// (listener, slices, message buffers, result channel) is allocated before
// the baseline, the relays are set up sequentially so no pooled copy buffer
// is shared, and runtime.GC is run several times before each reading: two
// cycles empty sync.Pool (primary, then victim) and runtime.GC finishes
// sweeping, so freed buffers are no longer counted as in use. Goroutine
// stacks are StackInuse, not HeapInuse, so they do not count.
func TestIdleRelayMemory(t *testing.T) {
	const (
		n        = 200
		perRelay = 16 << 10
	)
	for _, tc := range []struct {
		name string
		b    connKind // a is always TCP
		bulk int      // bytes sent each way before the 10-byte messages
		o    Options  // PipeWith's options
	}{
		{name: "tcp-tcp", b: kindTCP},
		{name: "tcp-tcp/after-bulk", b: kindTCP, bulk: 256 << 10},
		{name: "tcp-pipe/after-bulk", b: kindPipe, bulk: 256 << 10},
		{name: "tcp-tcp/after-bulk/half-close-bound", b: kindTCP, bulk: 256 << 10, o: Options{HalfCloseTimeout: time.Minute}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln := listen(t, "tcp")
			peersA := make([]net.Conn, 0, n)
			peersB := make([]net.Conn, 0, n)
			results := make([]<-chan pipeResult, 0, n)
			msg := []byte("0123456789")
			got := make([]byte, len(msg))
			bulk := make([]byte, tc.bulk)
			bulkGot := make([]byte, tc.bulk)
			for i := range bulk {
				bulk[i] = byte(i)
			}

			// exchange sends bulk (if any) then msg each way through the
			// relay, sequentially, reading into the preallocated buffers.
			exchange := func(pa, pb net.Conn) {
				t.Helper()
				deadline := time.Now().Add(wait)
				pa.SetDeadline(deadline)
				pb.SetDeadline(deadline)
				for _, d := range [][2]net.Conn{{pa, pb}, {pb, pa}} {
					from, to := d[0], d[1]
					for _, m := range []struct{ out, in []byte }{{bulk, bulkGot}, {msg, got}} {
						if len(m.out) == 0 {
							continue
						}
						werr := make(chan error, 1)
						go func() { _, err := from.Write(m.out); werr <- err }()
						if n, err := io.ReadFull(to, m.in); err != nil {
							t.Fatalf("%v to %v: read %d of %d bytes: %v", from.LocalAddr(), to.LocalAddr(), n, len(m.in), err)
						}
						if err := <-werr; err != nil {
							t.Fatal(err)
						}
						if !bytes.Equal(m.in, m.out) {
							t.Fatal("message corrupted")
						}
					}
				}
				pa.SetDeadline(time.Time{})
				pb.SetDeadline(time.Time{})
			}
			open := func() (net.Conn, net.Conn, <-chan pipeResult) {
				t.Helper()
				pa, a := dialAccept(t, ln)
				var pb, b net.Conn
				if tc.b == kindTCP {
					b, pb = dialAccept(t, ln)
				} else {
					pb, b = connPair(t, tc.b)
				}
				res := startPipeWith(t, a, b, tc.o)
				exchange(pa, pb)
				return pa, pb, res
			}

			// Warm up: one relay through the same code, so that lazily
			// initialised runtime and net state is not counted.
			open()

			heapInuse := func() uint64 {
				for range 4 {
					runtime.GC()
				}
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				return ms.HeapInuse
			}
			before := heapInuse()
			for range n {
				pa, pb, res := open()
				peersA = append(peersA, pa)
				peersB = append(peersB, pb)
				results = append(results, res)
			}
			after := heapInuse()
			grew := int64(after) - int64(before)
			t.Logf("HeapInuse grew by %d bytes for %d idle relays: %d bytes each (bound %d)",
				grew, n, grew/n, perRelay)
			if grew > n*perRelay {
				t.Errorf("HeapInuse grew by %d KiB for %d idle relays (%d bytes each); want < %d KiB (%d each): idle relays seem to keep copy buffers",
					grew>>10, n, grew/n, n*perRelay>>10, perRelay)
			}

			// The relays still work after being idle.
			exchange(peersA[n-1], peersB[n-1])
			for i := range n {
				peersA[i].Close()
				peersB[i].Close()
			}
			for _, res := range results {
				if r := pipeDone(t, res); r.err != nil {
					t.Errorf("Pipe error = %v; want nil", r.err)
				}
			}
		})
	}
}

// swap sends toB random bytes from peerA and toA from peerB, both at
// once, while each reads what it is sent; it fails the test on an error
// (each ends by the peers' deadlines) and returns the SHA-256 of what A
// and B sent and of what A and B received.
func swap(t *testing.T, peerA, peerB net.Conn, toA, toB int64) (sentA, sentB, gotA, gotB [sha256.Size]byte) {
	t.Helper()
	type out struct {
		sum [sha256.Size]byte
		err error
	}
	chSA, chSB := make(chan out, 1), make(chan out, 1)
	chGA, chGB := make(chan out, 1), make(chan out, 1)
	go func() { s, err := sendRandom(peerA, toB, 1); chSA <- out{s, err} }()
	go func() { s, err := sendRandom(peerB, toA, 2); chSB <- out{s, err} }()
	go func() { s, err := recvHash(peerA, toA); chGA <- out{s, err} }()
	go func() { s, err := recvHash(peerB, toB); chGB <- out{s, err} }()
	sa, sb, ga, gb := <-chSA, <-chSB, <-chGA, <-chGB
	for _, o := range []out{sa, sb, ga, gb} {
		if o.err != nil {
			t.Fatal(o.err)
		}
	}
	return sa.sum, sb.sum, ga.sum, gb.sum
}
