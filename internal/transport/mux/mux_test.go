package mux

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	lyamux "github.com/libp2p/go-yamux/v5"
	"go.uber.org/goleak"

	"github.com/diglett/diglett/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tlsConns returns both ends of a TLS 1.3 connection over loopback TCP.
func tlsConns(t testing.TB) (client, server net.Conn) {
	t.Helper()
	return tlsConnsOver(t, nil)
}

// tlsConnsOver is tlsConns with the client's TLS over wrap(its TCP
// connection) when wrap is not nil.
func tlsConnsOver(t testing.TB, wrap func(net.Conn) net.Conn) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	srvConf := testutil.ServerTLS(t)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- res{nil, err}
			return
		}
		tc := tls.Server(c, srvConf)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		err = tc.Handshake()
		c.SetDeadline(time.Time{})
		ch <- res{tc, err}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	var under net.Conn = raw
	if wrap != nil {
		under = wrap(raw)
	}
	tc := tls.Client(under, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	raw.SetDeadline(time.Time{})
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	return tc, r.c
}

// pair returns a client and a server session of this package over TLS.
func pair(t testing.TB, cfg Config) (*Session, *Session) {
	c, s := tlsConns(t)
	cs, ss := Client(c, cfg), Server(s, cfg)
	t.Cleanup(func() { cs.Close(); ss.Close() })
	return cs, ss
}

// session is what the interop tests need of either implementation.
type session interface {
	open() (stream, error)
	accept() (stream, error)
	close()
}

type stream interface {
	io.ReadWriteCloser
	CloseWrite() error
	Reset() error
}

type ours struct{ *Session }

func (s ours) open() (stream, error)   { return s.OpenStream(context.Background()) }
func (s ours) accept() (stream, error) { return s.AcceptStream(context.Background()) }
func (s ours) close()                  { s.Close() }

type theirs struct{ *lyamux.Session }

func (s theirs) open() (stream, error)   { return s.OpenStream(context.Background()) }
func (s theirs) accept() (stream, error) { return s.AcceptStream() }
func (s theirs) close()                  { s.Close() }

func libp2pConfig() *lyamux.Config {
	c := lyamux.DefaultConfig()
	c.LogOutput = io.Discard
	c.EnableKeepAlive = false
	return c
}

// mixed returns a client and a server session, one of them the library's.
func mixed(t *testing.T, oursIsClient bool, cfg Config) (client, server session, o *Session, l *lyamux.Session) {
	c, s := tlsConns(t)
	var err error
	if oursIsClient {
		o = Client(c, cfg)
		l, err = lyamux.Server(s, libp2pConfig(), nil)
		client, server = ours{o}, theirs{l}
	} else {
		l, err = lyamux.Client(c, libp2pConfig(), nil)
		o = Server(s, cfg)
		client, server = theirs{l}, ours{o}
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.close(); server.close() })
	return client, server, o, l
}

func sides() []struct {
	name         string
	oursIsClient bool
} {
	return []struct {
		name         string
		oursIsClient bool
	}{{"ours-client", true}, {"ours-server", false}}
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// echoServer echoes every accepted stream and half-closes after EOF.
func echoServer(s session) {
	go func() {
		for {
			st, err := s.accept()
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

// exchange sends size bytes on a new stream, half-closes and checks the
// echo's checksum.
func exchange(c session, seed uint64, size int) error {
	st, err := c.open()
	if err != nil {
		return err
	}
	defer st.Close()
	data := randBytes(seed, size)
	want := sha256.Sum256(data)
	werr := make(chan error, 1)
	go func() {
		_, err := st.Write(data)
		if err == nil {
			err = st.CloseWrite()
		}
		werr <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, st)
	if err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if n != int64(size) || !bytes.Equal(h.Sum(nil), want[:]) {
		return fmt.Errorf("echo differs: %d bytes", n)
	}
	return nil
}

func TestInteropData(t *testing.T) {
	for _, sd := range sides() {
		t.Run(sd.name, func(t *testing.T) {
			c, s, _, _ := mixed(t, sd.oursIsClient, Config{})
			echoServer(s)
			const streams = 16
			const size = 4 << 20
			errs := make(chan error, streams)
			var wg sync.WaitGroup
			for i := range streams {
				wg.Go(func() { errs <- exchange(c, uint64(i), size) })
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestInteropReverse opens streams from the accepting side too.
func TestInteropReverse(t *testing.T) {
	for _, sd := range sides() {
		t.Run(sd.name, func(t *testing.T) {
			c, s, _, _ := mixed(t, sd.oursIsClient, Config{})
			echoServer(c)
			for i := range 4 {
				if err := exchange(s, uint64(i), 1<<20); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestInteropReset(t *testing.T) {
	for _, sd := range sides() {
		for _, resetBy := range []string{"opener", "acceptor"} {
			t.Run(sd.name+"/"+resetBy, func(t *testing.T) {
				c, s, _, _ := mixed(t, sd.oursIsClient, Config{})
				accepted := make(chan stream, 1)
				go func() {
					st, err := s.accept()
					if err == nil {
						accepted <- st
					}
				}()
				st, err := c.open()
				if err != nil {
					t.Fatal(err)
				}
				st.Write([]byte("x"))
				var peer stream
				select {
				case peer = <-accepted:
				case <-time.After(10 * time.Second):
					t.Fatal("not accepted")
				}
				if _, err := io.ReadFull(peer, make([]byte, 1)); err != nil {
					t.Fatal(err)
				}
				a, b := st, peer
				if resetBy == "acceptor" {
					a, b = peer, st
				}
				a.Reset()
				done := make(chan error, 1)
				go func() {
					_, err := b.Read(make([]byte, 1))
					done <- err
				}()
				select {
				case err := <-done:
					if err == nil || errors.Is(err, io.EOF) {
						t.Fatalf("read after the peer's reset: %v, want a reset error", err)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("read not woken by the peer's reset")
				}
				if err := testutil.Poll(10*time.Second, func() error {
					_, err := b.Write([]byte("y"))
					if err == nil {
						return errors.New("write after the peer's reset succeeded")
					}
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				b.Close()
			})
		}
	}
}

// startupDone waits until the library's session has measured its first
// round trip: it opens with a ping of its own, and a peer that closes
// before that ping is answered makes the library's write fail, which
// then ends its session ahead of the GoAway it was sent.
func startupDone(t *testing.T, l *lyamux.Session) {
	t.Helper()
	if err := testutil.Poll(10*time.Second, func() error {
		if l.RTT() == 0 {
			return errors.New("the library's first ping is not answered")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestInteropGoAwayCode(t *testing.T) {
	t.Run("ours-closes", func(t *testing.T) {
		_, _, o, l := mixed(t, true, Config{})
		startupDone(t, l)
		o.CloseWithError(7)
		select {
		case <-l.CloseChan():
		case <-time.After(10 * time.Second):
			t.Fatal("their session did not end")
		}
		_, err := l.AcceptStream()
		var ge *lyamux.GoAwayError
		if !errors.As(err, &ge) || !ge.Remote || ge.ErrorCode != 7 {
			t.Fatalf("their session ended with %v, want a remote go away with code 7", err)
		}
	})
	t.Run("theirs-closes", func(t *testing.T) {
		_, _, o, l := mixed(t, false, Config{})
		startupDone(t, l)
		l.CloseWithError(9)
		select {
		case <-o.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("our session did not end")
		}
		var ge *GoAwayError
		if !errors.As(o.Err(), &ge) || !ge.Remote || ge.Code != 9 {
			t.Fatalf("our session ended with %v, want a remote go away with code 9", o.Err())
		}
	})
}

// TestInteropKeepalive: our pings are answered by their side and theirs
// by ours.
func TestInteropKeepalive(t *testing.T) {
	for _, sd := range sides() {
		t.Run(sd.name, func(t *testing.T) {
			cfg := Config{KeepAlivePeriod: 50 * time.Millisecond, MaxIdleTimeout: 2 * time.Second}
			_, _, o, l := mixed(t, sd.oursIsClient, cfg)
			if _, err := l.Ping(); err != nil {
				t.Fatalf("their ping: %v", err)
			}
			// Several keepalive periods of silence from the
			// application: the session lives on our pings' answers.
			if err := testutil.Poll(10*time.Second, func() error {
				o.kmu.Lock()
				id := o.pingID
				o.kmu.Unlock()
				if id < 5 {
					return fmt.Errorf("%d pings so far", id)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if err := o.Err(); err != nil {
				t.Fatalf("session ended: %v", err)
			}
			if o.RTT() <= 0 {
				t.Fatal("no round-trip time measured")
			}
		})
	}
}

// TestInteropStreamCap: a stream above the acceptor's cap is reset, and
// the session goes on.
func TestInteropStreamCap(t *testing.T) {
	c, s := tlsConns(t)
	o := Server(s, Config{MaxIncomingStreams: 2})
	l, err := lyamux.Client(c, libp2pConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	defer o.Close()
	echoServer(ours{o})
	var open []*lyamux.Stream
	for range 2 {
		st, err := l.OpenStream(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		st.Write([]byte("a"))
		if _, err := io.ReadFull(st, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		open = append(open, st)
	}
	st, err := l.OpenStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("a"))
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := st.Read(make([]byte, 1)); n != 0 || !errors.Is(err, lyamux.ErrStreamReset) {
		t.Fatalf("stream above the cap: %d, %v; want a reset", n, err)
	}
	for _, st := range open {
		st.Close()
	}
	if o.IsClosed() {
		t.Fatal("session ended")
	}
}

// countingConn counts the writes made on a connection.
type countingConn struct {
	net.Conn
	mu     sync.Mutex
	writes int
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes++
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// TestGroupCommit: under 64 concurrent writers, writes carry more than
// one frame each on average.
func TestGroupCommit(t *testing.T) {
	c, s := tlsConns(t)
	cc := &countingConn{Conn: c}
	cs, ss := Client(cc, Config{}), Server(s, Config{})
	defer cs.Close()
	defer ss.Close()
	echoServer(ours{ss})
	const writers = 64
	const msgs = 200
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	start := make(chan struct{})
	for i := range writers {
		wg.Go(func() {
			st, err := cs.OpenStream(context.Background())
			if err != nil {
				errs <- err
				return
			}
			defer st.Close()
			<-start
			msg := randBytes(uint64(i), 100)
			go func() {
				for range msgs {
					if _, err := st.Write(msg); err != nil {
						return
					}
				}
				st.CloseWrite()
			}()
			n, err := io.Copy(io.Discard, st)
			if err != nil || n != 100*msgs {
				errs <- fmt.Errorf("echo: %d bytes, %v", n, err)
			}
		})
	}
	before := cs.frames.Load()
	cc.mu.Lock()
	w0 := cc.writes
	cc.mu.Unlock()
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	cc.mu.Lock()
	writes := cc.writes - w0
	cc.mu.Unlock()
	frames := cs.frames.Load() - before
	t.Logf("%d data frames in %d connection writes (%.1f per write)", frames, writes, float64(frames)/float64(writes))
	if frames <= int64(writes) {
		t.Fatalf("%d data frames in %d writes: no group commit", frames, writes)
	}
}

// TestIdleGoroutines: an idle session holds exactly one goroutine per
// side, its receive loop.
func TestIdleGoroutines(t *testing.T) {
	c, s := tlsConns(t)
	cs, ss := Client(c, Config{KeepAlivePeriod: time.Hour}), Server(s, Config{KeepAlivePeriod: time.Hour})
	defer cs.Close()
	defer ss.Close()
	// Use it once, then let it go idle.
	echoServer(ours{ss})
	if err := exchange(ours{cs}, 1, 1000); err != nil {
		t.Fatal(err)
	}
	if err := testutil.Poll(10*time.Second, func() error {
		// Counted by what they run: the handshake's goroutine in tlsConns
		// may still be ending, and another test's sessions closing.
		if n := testutil.GoroutinesIn("mux.(*Session).recvLoop"); n != 2 {
			return fmt.Errorf("%d receive loops for two idle sessions, want 2", n)
		}
		if n := testutil.GoroutinesIn("mux.echoServer"); n != 1 {
			return fmt.Errorf("%d goroutines in the echo server, want its accept loop only", n)
		}
		// Every goroutine running this package's code, less the tests'
		// own (this one and those paused to run in parallel).
		if n := testutil.GoroutinesIn("internal/transport/mux.", "testing.tRunner"); n != 3 {
			return fmt.Errorf("%d goroutines in the package, want 3: the receive loops and the accept", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, sess := range []*Session{cs, ss} {
		sess.wmu.Lock()
		held := sess.out != nil || sess.spare != nil
		sess.wmu.Unlock()
		if held {
			t.Fatal("an idle session holds a write buffer")
		}
	}
}

// TestWindowGrowth: a stream whose reader keeps up grows its window (the
// receiving session is told a long round-trip time, so that reading a
// window's worth counts as keeping up whatever the machine's load); one
// that is not read stays at the initial window and never gets more.
func TestWindowGrowth(t *testing.T) {
	cs, ss := pair(t, Config{})
	if err := testutil.Poll(10*time.Second, func() error {
		if ss.RTT() == 0 {
			return errors.New("first ping not answered")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ss.rtt.Store(int64(10 * time.Second))
	accepted := make(chan *Stream, 2)
	go func() {
		for {
			st, err := ss.AcceptStream(context.Background())
			if err != nil {
				return
			}
			accepted <- st
		}
	}()
	st, err := cs.OpenStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	go func() {
		buf := make([]byte, 64<<10)
		for range 256 { // 16 MiB
			if _, err := st.Write(buf); err != nil {
				return
			}
		}
		st.CloseWrite()
	}()
	peer := <-accepted
	if _, err := io.Copy(io.Discard, peer); err != nil {
		t.Fatal(err)
	}
	peer.mu.Lock()
	win := peer.recvWindow
	peer.mu.Unlock()
	if win <= InitialWindow {
		t.Fatalf("window %d after 16 MiB read as fast as it came: did not grow", win)
	}
	peer.Close()

	// A stalled stream: the writer gets the initial window, no more.
	st2, err := cs.OpenStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	st2.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
	n, err := st2.Write(make([]byte, 1<<20))
	if !errors.Is(err, os.ErrDeadlineExceeded) || n != InitialWindow {
		t.Fatalf("write to a stream nobody reads: %d bytes, %v; want %d and a timeout", n, err, InitialWindow)
	}
	peer2 := <-accepted
	peer2.Close()
}

// TestCloseThenPeerSends: a stream closed here whose peer goes on sending
// is reset, so that the peer is not left blocked.
func TestCloseThenPeerSends(t *testing.T) {
	cs, ss := pair(t, Config{})
	st, err := cs.OpenStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("x"))
	peer, err := ss.AcceptStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(peer, make([]byte, 1))
	peer.Close()
	st.SetWriteDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 32<<10)
	var werr error
	for range 1000 { // far more than a window
		if _, werr = st.Write(buf); werr != nil {
			break
		}
	}
	if !errors.Is(werr, ErrStreamReset) {
		t.Fatalf("writing to a stream the peer closed: %v, want a reset", werr)
	}
	st.Close()
	if err := testutil.Poll(10*time.Second, func() error {
		if a, b := cs.NumStreams(), ss.NumStreams(); a+b != 0 {
			return fmt.Errorf("%d and %d streams left", a, b)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestReadDeadlineWakes(t *testing.T) {
	cs, ss := pair(t, Config{})
	st, err := cs.OpenStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	done := make(chan error, 1)
	go func() {
		_, err := st.Read(make([]byte, 1))
		done <- err
	}()
	st.SetReadDeadline(time.Now().Add(-time.Second)) // wakes the blocked read
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read: %v, want a timeout", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("blocked read not woken by a deadline in the past")
	}
	_ = ss
}

// startWaitingRead starts a Read of st into p and returns once it waits;
// its error arrives on the channel.
func startWaitingRead(t *testing.T, st *Stream, p []byte) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := st.Read(p)
		done <- err
	}()
	if err := testutil.Poll(10*time.Second, func() error {
		st.mu.Lock()
		defer st.mu.Unlock()
		if st.readWaiters != 1 {
			return fmt.Errorf("%d reads waiting", st.readWaiters)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return done
}

// A stream read only as it says it is readable, and written within its
// window, holds no wait channels (an idle session's control stream is
// one): they are made by the first call that waits, which they then wake,
// and given back when the stream is read as notified.
func TestStreamWaitChannelsOnDemand(t *testing.T) {
	cs, ss := pair(t, Config{})
	st, err := cs.OpenStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	peer, err := ss.AcceptStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	ready := make(chan struct{}, 1)
	peer.OnReadable(func() { signal(ready) })
	got := make([]byte, 5)
	for n := 0; n < len(got); {
		<-ready
		k, err := peer.ReadNow(got[n:])
		if err != nil && err != ErrWouldBlock {
			t.Fatal(err)
		}
		n += k
	}
	st.SetDeadline(time.Now().Add(time.Minute))
	st.SetDeadline(time.Time{})
	if peer.waits.Load() != nil {
		t.Error("a stream read as notified and written within its window made wait channels")
	}

	// A Read that waits makes them and is woken through them; read as
	// notified from then on, the stream gives them back; the next Read
	// that waits makes them again.
	waitingRead := func() {
		t.Helper()
		done := startWaitingRead(t, st, got[:1])
		if st.waits.Load() == nil {
			t.Fatal("a waiting Read has no wait channels")
		}
		peer.Write([]byte("!"))
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("waiting Read not woken by data")
		}
	}
	waitingRead()
	st.OnReadable(func() {})
	if st.waits.Load() != nil {
		t.Error("wait channels kept by a stream now read as notified")
	}
	waitingRead()
	if peer.waits.Load() != nil {
		t.Error("a stream written within its window made wait channels")
	}
}

// TestAcceptSignalDropped: a session that can take no more streams (a
// gateway's takes its control stream only) keeps no accept channel once
// AcceptStream, which waited for it, returned.
func TestAcceptSignalDropped(t *testing.T) {
	cs, ss := pair(t, Config{MaxIncomingStreams: 1})
	accepted := make(chan error, 1)
	go func() {
		_, err := ss.AcceptStream(context.Background())
		accepted <- err
	}()
	if err := testutil.Poll(10*time.Second, func() error {
		ss.smu.Lock()
		defer ss.smu.Unlock()
		if ss.acceptWait != 1 || ss.acceptSig == nil {
			return fmt.Errorf("%d accepts waiting", ss.acceptWait)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	st, err := cs.OpenStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.Write([]byte("x"))
	if err := <-accepted; err != nil {
		t.Fatal(err)
	}
	ss.smu.Lock()
	defer ss.smu.Unlock()
	if ss.acceptSig != nil || ss.acceptWait != 0 {
		t.Errorf("accept channel kept (%d waiting) by a session at its stream cap", ss.acceptWait)
	}
}

// A deadline set while no Read waits leaves no wake-up behind: the next
// Read would take it and wait again for nothing. One set while a Read
// waits wakes it.
func TestReadDeadlineWakesOnlyWaiters(t *testing.T) {
	cs, _ := pair(t, Config{})
	st, err := cs.OpenStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.SetReadDeadline(time.Now().Add(time.Minute))
	st.SetReadDeadline(time.Time{})
	if w := st.waits.Load(); w != nil && len(w.read) != 0 {
		t.Fatalf("%d wake-ups left for no reader", len(w.read))
	}
	done := startWaitingRead(t, st, make([]byte, 1))
	st.SetReadDeadline(time.Now().Add(-time.Second))
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read: %v, want a timeout", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("waiting read not woken by a deadline in the past")
	}
}

func TestOpenStreamHonoursContext(t *testing.T) {
	// The peer never accepts: after AcceptBacklog unacknowledged opens,
	// OpenStream waits until its context ends.
	cs, _ := pair(t, Config{AcceptBacklog: 4})
	for range 4 {
		if _, err := cs.OpenStream(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := cs.OpenStream(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("open beyond the backlog: %v, want the context's error", err)
	}
}

// TestOpenStreamWaitsForAcks: opens beyond AcceptBacklog wait for the
// peer to acknowledge earlier streams, and each acknowledgement lets a
// waiting open through.
func TestOpenStreamWaitsForAcks(t *testing.T) {
	cs, ss := pair(t, Config{AcceptBacklog: 2})
	for range 2 {
		if _, err := cs.OpenStream(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opened := make(chan error, 3)
	for range 3 {
		go func() {
			_, err := cs.OpenStream(ctx)
			opened <- err
		}()
	}
	select {
	case err := <-opened:
		t.Fatalf("an open beyond the backlog returned (%v) before any acknowledgement", err)
	case <-time.After(50 * time.Millisecond):
	}
	// Accepting acknowledges: the two first, then the two let through,
	// then the last.
	for i := range 5 {
		if _, err := ss.AcceptStream(ctx); err != nil {
			t.Fatalf("accept %d: %v", i, err)
		}
	}
	for range 3 {
		if err := <-opened; err != nil {
			t.Fatalf("waiting open: %v", err)
		}
	}
}

func TestSessionCloseWakesEverything(t *testing.T) {
	cs, ss := pair(t, Config{})
	st, err := cs.OpenStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("x"))
	peer, err := ss.AcceptStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// A round trip first: the peer's acknowledgement of the stream is
	// then read here. Unread input at the close makes the kernel reset
	// the connection, and the peer may then see the reset before the
	// GoAway.
	if _, err := io.ReadFull(peer, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := peer.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(st, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 3)
	go func() { _, err := st.Read(make([]byte, 1)); errs <- err }()
	go func() { _, err := peer.Read(make([]byte, 2)); errs <- err }()
	go func() { _, err := ss.AcceptStream(context.Background()); errs <- err }()
	cs.CloseWithError(5)
	for range 3 {
		select {
		case <-errs:
		case <-time.After(10 * time.Second):
			t.Fatal("a blocked call was not woken by the session's end")
		}
	}
	var ge *GoAwayError
	if !errors.As(ss.Err(), &ge) || ge.Code != 5 || !ge.Remote {
		t.Fatalf("peer ended with %v", ss.Err())
	}
}

// TestHoldFlush: the batch hooks bracket every write of the connection.
func TestHoldFlush(t *testing.T) {
	c, s := tlsConns(t)
	var mu sync.Mutex
	var holds, flushes int
	held := false
	cfg := Config{
		Hold: func() {
			mu.Lock()
			defer mu.Unlock()
			if held {
				t.Error("Hold twice without Flush")
			}
			held = true
			holds++
		},
		Flush: func() error {
			mu.Lock()
			defer mu.Unlock()
			if !held {
				t.Error("Flush without Hold")
			}
			held = false
			flushes++
			return nil
		},
	}
	cs, ss := Client(c, cfg), Server(s, Config{})
	echoServer(ours{ss})
	for i := range 8 {
		if err := exchange(ours{cs}, uint64(i), 256<<10); err != nil {
			t.Fatal(err)
		}
	}
	cs.Close()
	ss.Close()
	mu.Lock()
	defer mu.Unlock()
	if holds == 0 || holds != flushes || int64(holds) < cs.batches.Load() {
		t.Fatalf("%d holds, %d flushes, %d batches", holds, flushes, cs.batches.Load())
	}
}

// BenchmarkExchange is a request and its response on one stream, with the
// read deadline set and cleared around the wait as the ingress does.
func BenchmarkExchange(b *testing.B) {
	cs, ss := pair(b, Config{})
	go func() {
		st, err := ss.AcceptStream(context.Background())
		if err != nil {
			return
		}
		buf := make([]byte, 100)
		for {
			if _, err := io.ReadFull(st, buf); err != nil {
				return
			}
			if _, err := st.Write(buf); err != nil {
				return
			}
		}
	}()
	st, err := cs.OpenStream(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	req, resp := make([]byte, 100), make([]byte, 100)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := st.Write(req); err != nil {
			b.Fatal(err)
		}
		st.SetReadDeadline(time.Now().Add(time.Minute))
		if _, err := io.ReadFull(st, resp); err != nil {
			b.Fatal(err)
		}
		st.SetReadDeadline(time.Time{})
	}
}
