package quictransport

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.uber.org/goleak"

	"github.com/diglett/diglett/internal/identity"
	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/transporttest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// noLeaks checks, after the test and all its cleanups, that no goroutine
// it started is left.
func noLeaks(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

const alpn = "diglett"

func serverTLS(t *testing.T) *tls.Config {
	tc := testutil.ServerTLS(t)
	tc.NextProtos = []string{alpn}
	return tc
}

func clientTLS(protos ...string) *tls.Config {
	if len(protos) == 0 {
		protos = []string{alpn}
	}
	return &tls.Config{InsecureSkipVerify: true, NextProtos: protos, MinVersion: tls.VersionTLS13}
}

// listen starts a listener on a loopback UDP socket, closed at cleanup.
func listen(t *testing.T, cfg transport.Config) *Listener {
	t.Helper()
	pconn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(pconn, serverTLS(t), cfg, ListenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// pairVia connects a client and a server session over real UDP on
// loopback; the client dials through addr (the listener itself, or a relay
// in front of it) when set.
func pairVia(t *testing.T, cfg transport.Config, via func(ln *Listener) string) (client, server *Session) {
	t.Helper()
	ln := listen(t, cfg)
	addr := ln.Addr().String()
	if via != nil {
		addr = via(ln)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type res struct {
		s   *Session
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := ln.Accept(ctx)
		ch <- res{s, err}
	}()
	c, err := Dial(ctx, addr, clientTLS(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		c.Close()
		t.Fatal(r.err)
	}
	t.Cleanup(func() { c.Close(); r.s.Close() })
	return c, r.s
}

func TestConformance(t *testing.T) {
	noLeaks(t)
	const maxIncoming = 64
	transporttest.Run(t, func(t *testing.T) (transport.Session, transport.Session) {
		c, s := pairVia(t, transport.Config{MaxIncomingStreams: maxIncoming}, nil)
		return c, s
	}, transporttest.Options{MaxIncoming: maxIncoming})
}

// relay forwards UDP datagrams between one client and a server until cut,
// then silently drops everything, like a peer that vanished.
type relay struct {
	front *net.UDPConn // the client's side
	back  *net.UDPConn // connected to the server
	cut   atomic.Bool
	peer  atomic.Pointer[net.UDPAddr]
	wg    sync.WaitGroup
}

func newRelay(t *testing.T, target net.Addr) *relay {
	t.Helper()
	front, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	back, err := net.DialUDP("udp", nil, target.(*net.UDPAddr))
	if err != nil {
		front.Close()
		t.Fatal(err)
	}
	r := &relay{front: front, back: back}
	r.wg.Add(2)
	go func() {
		defer r.wg.Done()
		buf := make([]byte, 64<<10)
		for {
			n, from, err := front.ReadFromUDP(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil || r.cut.Load() {
				continue
			}
			r.peer.Store(from)
			back.Write(buf[:n])
		}
	}()
	go func() {
		defer r.wg.Done()
		buf := make([]byte, 64<<10)
		for {
			n, err := back.Read(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			to := r.peer.Load()
			if err != nil || r.cut.Load() || to == nil {
				continue
			}
			front.WriteToUDP(buf[:n], to)
		}
	}()
	t.Cleanup(func() {
		front.Close()
		back.Close()
		r.wg.Wait()
	})
	return r
}

// idleMargin is how late past MaxIdleTimeout a dead peer may be noticed in
// a test: timers and goroutines run late under the race detector on a
// shared machine.
const idleMargin = 300 * time.Millisecond

func TestDeadPeerDetected(t *testing.T) {
	noLeaks(t)
	idle := 2 * time.Second
	var r *relay
	c, s := pairVia(t, transport.Config{MaxIdleTimeout: idle}, func(ln *Listener) string {
		r = newRelay(t, ln.Addr())
		return r.front.LocalAddr().String()
	})
	// Both directions carry data first.
	go func() {
		st, err := s.AcceptStream(context.Background())
		if err == nil {
			io.Copy(st, st)
		}
	}()
	st, err := c.OpenStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("x"))
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(st, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}

	// The peer dies right after the exchange, when each side has just
	// heard from the other: the worst case, where a side's idle timer
	// would start only when its next keepalive goes out.
	r.cut.Store(true)
	cut := time.Now()
	for name, sess := range map[string]*Session{"client": c, "server": s} {
		select {
		case <-sess.Context().Done():
		case <-time.After(10 * idle):
			t.Fatalf("%s did not notice the dead peer", name)
		}
		took := time.Since(cut)
		cause := context.Cause(sess.Context())
		t.Logf("%s: after %v: %v", name, took, cause)
		// The bound is the idle timeout itself, counted from the last
		// packet heard (before the cut). The margin absorbs the
		// timer's and the scheduler's delays on a loaded machine; the
		// old bound (keepalive + idle timeout) was half the timeout
		// above it.
		if took > idle+idleMargin {
			t.Errorf("%s noticed the dead peer after %v, want within MaxIdleTimeout %v (+%v)", name, took, idle, idleMargin)
		}
		var it *quic.IdleTimeoutError
		if !errors.Is(cause, transport.ErrSessionClosed) || !errors.As(cause, &it) {
			t.Errorf("%s: cause %v, want an idle timeout wrapping ErrSessionClosed", name, cause)
		}
	}
}

func TestCloseCause(t *testing.T) {
	noLeaks(t)
	c, s := pairVia(t, transport.Config{}, nil)
	c.CloseWithError(transport.CodeShuttingDown, "bye")
	select {
	case <-s.Context().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("peer session did not end")
	}
	cause := context.Cause(s.Context())
	t.Log(cause)
	var ae *quic.ApplicationError
	if !errors.Is(cause, transport.ErrSessionClosed) || !errors.As(cause, &ae) ||
		ae.ErrorCode != quic.ApplicationErrorCode(transport.CodeShuttingDown) || !ae.Remote {
		t.Fatalf("peer's cause %v, want code %d from the peer", cause, transport.CodeShuttingDown)
	}
	if !strings.Contains(cause.Error(), "bye") {
		t.Errorf("peer's cause %q lacks the reason", cause)
	}
	if cause := context.Cause(c.Context()); !errors.Is(cause, transport.ErrSessionClosed) {
		t.Errorf("closing side's cause %v", cause)
	}
	if _, err := s.AcceptStream(context.Background()); !errors.Is(err, transport.ErrSessionClosed) {
		t.Errorf("AcceptStream after the end: %v, want ErrSessionClosed", err)
	}
	if _, err := c.OpenStream(context.Background()); !errors.Is(err, transport.ErrSessionClosed) {
		t.Errorf("OpenStream after Close: %v, want ErrSessionClosed", err)
	}
	if c.ConnectionState().NegotiatedProtocol != alpn {
		t.Errorf("ALPN %q", c.ConnectionState().NegotiatedProtocol)
	}
}

func TestAcceptStreamHonoursContext(t *testing.T) {
	noLeaks(t)
	_, s := pairVia(t, transport.Config{}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := s.AcceptStream(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("AcceptStream: %v, want the context's error", err)
	}
}

// streamPair opens a stream from c and accepts it on s.
func streamPair(t *testing.T, c, s *Session) (st, peer transport.Stream) {
	t.Helper()
	st, err := c.OpenStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("x"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	peer, err = s.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(peer, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	peer.SetReadDeadline(time.Time{})
	return st, peer
}

func TestResetIsNotEOF(t *testing.T) {
	noLeaks(t)
	c, s := pairVia(t, transport.Config{}, nil)
	st, peer := streamPair(t, c, s)
	st.Reset()
	peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.ReadAll(peer)
	var se *quic.StreamError
	if !errors.As(err, &se) || !se.Remote {
		t.Fatalf("peer read after reset: %v, want the peer's reset", err)
	}
	if _, err := st.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after own Reset: %v, want net.ErrClosed", err)
	}
	// The peer's writes fail too, once the reset has arrived.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := peer.Write([]byte("y")); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("peer's writes still succeed after reset")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCloseUnblocksWrite(t *testing.T) {
	noLeaks(t)
	c, s := pairVia(t, transport.Config{}, nil)
	st, peer := streamPair(t, c, s)
	defer peer.Close()
	// The peer never reads: the write fills the stream's window and
	// blocks until Close.
	sent := c.conn.ConnectionStats().BytesSent
	errc := make(chan error, 1)
	go func() {
		_, err := st.Write(make([]byte, 8<<20))
		errc <- err
	}()
	// Close once part of the write has gone out (a fixed wait was not
	// always enough on a loaded machine).
	if err := pollFor(10*time.Second, func() error {
		if c.conn.ConnectionStats().BytesSent < sent+64<<10 {
			return errors.New("less than 64 KiB of the write sent")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("blocked write after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not unblock a Write")
	}
	// The data already written stays deliverable, then EOF.
	peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, peer)
	if err != nil {
		t.Fatalf("peer read after close: %v (%d bytes)", err, n)
	}
	if n == 0 {
		t.Error("peer got none of the data written before Close")
	}
}

func TestCloseWriteHalfClose(t *testing.T) {
	noLeaks(t)
	c, s := pairVia(t, transport.Config{}, nil)
	st, peer := streamPair(t, c, s)
	defer st.Close()
	defer peer.Close()
	st.Write([]byte("ping"))
	st.CloseWrite()
	peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(peer)
	if err != nil || string(got) != "ping" {
		t.Fatalf("peer read %q, %v", got, err)
	}
	// The other direction still works.
	peer.Write([]byte("pong"))
	peer.CloseWrite()
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err = io.ReadAll(st)
	if err != nil || string(got) != "pong" {
		t.Fatalf("read after own CloseWrite: %q, %v", got, err)
	}
}

func TestALPNMismatch(t *testing.T) {
	noLeaks(t)
	ln := listen(t, transport.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, ln.Addr().String(), clientTLS("other"), transport.Config{})
	if err == nil {
		c.Close()
		t.Fatal("dial with a foreign ALPN succeeded")
	}
	t.Log(err)
	if !strings.Contains(err.Error(), "ALPN") {
		t.Errorf("error %q does not name the ALPN mismatch", err)
	}
	actx, acancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer acancel()
	if s, err := ln.Accept(actx); err == nil {
		s.Close()
		t.Fatal("listener accepted a session with a foreign ALPN")
	}
}

func TestListenerCloseEndsAccept(t *testing.T) {
	noLeaks(t)
	ln := listen(t, transport.Config{})
	errc := make(chan error, 1)
	go func() {
		_, err := ln.Accept(context.Background())
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	ln.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end Accept")
	}
	// The socket is closed with the listener.
	if _, err := ln.pconn.WriteTo([]byte{0}, ln.Addr()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("socket after Close: %v, want closed", err)
	}
}

// A session whose handshake completed but that was never accepted is
// refused when the listener closes: its peer learns it at once rather than
// after the idle timeout.
func TestListenerCloseRefusesUnaccepted(t *testing.T) {
	noLeaks(t)
	ln := listen(t, transport.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, ln.Addr().String(), clientTLS(), transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ln.Close()
	select {
	case <-c.Context().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("session never accepted did not end with the listener")
	}
	cause := context.Cause(c.Context())
	t.Log(cause)
	if !errors.Is(cause, transport.ErrSessionClosed) {
		t.Errorf("cause %v, want ErrSessionClosed", cause)
	}
}

// Closing the listener stops new sessions but keeps the accepted ones (the
// gateway drains them on shutdown); the socket closes with the last one.
func TestListenerCloseKeepsSessions(t *testing.T) {
	noLeaks(t)
	var ln *Listener
	c, s := pairVia(t, transport.Config{}, func(l *Listener) string {
		ln = l
		return l.Addr().String()
	})
	ln.Close()
	st, peer := streamPair(t, c, s)
	go func() {
		io.Copy(peer, peer)
		peer.CloseWrite()
	}()
	st.Write([]byte("still here"))
	st.CloseWrite()
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(st); err != nil || string(got) != "still here" {
		t.Fatalf("echo after listener close: %q, %v", got, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if c2, err := Dial(ctx, ln.Addr().String(), clientTLS(), transport.Config{}); err == nil {
		c2.Close()
		t.Fatal("dial after listener close succeeded")
	}
	s.Close()
	if _, err := ln.pconn.WriteTo([]byte{0}, ln.Addr()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("socket after the last session: %v, want closed", err)
	}
}

func TestDialBoundedByContext(t *testing.T) {
	noLeaks(t)
	// A UDP socket that never answers.
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		c, err := Dial(ctx, silent.LocalAddr().String(), clientTLS(), transport.Config{})
		if err == nil {
			c.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("dial to a silent port: %v, want the context's deadline", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("dial outlived its context")
	}
}

func TestStreamAboveLimitRefused(t *testing.T) {
	noLeaks(t)
	c, s := pairVia(t, transport.Config{MaxIncomingStreams: 1}, nil)
	st, peer := streamPair(t, c, s)
	defer peer.Close()
	_, err := c.OpenStream(context.Background())
	if err == nil {
		t.Fatal("stream above the peer's limit opened")
	}
	t.Log(err)
	var limit *quic.StreamLimitReachedError
	if !errors.As(err, &limit) {
		t.Errorf("error %q does not say the limit was reached", err)
	}
	// Once a stream ends, one more is granted.
	st.Close()
	io.Copy(io.Discard, peer)
	peer.Close()
	if _, err := c.OpenStream(context.Background()); err != nil {
		t.Fatalf("stream after room was made: %v", err)
	}
}

func TestQuietsBufferWarning(t *testing.T) {
	noLeaks(t)
	listen(t, transport.Config{})
	if os.Getenv(envBufferWarning) == "" {
		t.Fatalf("%s not set: quic-go would log its own buffer warning", envBufferWarning)
	}
}

func TestUDPBufferWarning(t *testing.T) {
	const small, fine = 212992, 4 << 20
	for _, tc := range []struct {
		name       string
		rmem, wmem int
		force      bool
		want       []string // substrings; none means no warning
	}{
		{"both fine", fine, fine, false, nil},
		{"exactly half", udpBufferSize / 2, udpBufferSize / 2, false, nil},
		{"both small", small, small, false, []string{
			"net.core.rmem_max=212992", "net.core.wmem_max=212992",
			"sysctl -w net.core.rmem_max=7340032 net.core.wmem_max=7340032",
		}},
		{"read small", small, fine, false, []string{"sysctl -w net.core.rmem_max=7340032"}},
		{"write small", fine, small, false, []string{"sysctl -w net.core.wmem_max=7340032"}},
		{"may force", small, small, true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := udpBufferWarning(tc.rmem, tc.wmem, tc.force)
			if len(tc.want) == 0 {
				if got != "" {
					t.Fatalf("warning %q, want none", got)
				}
				return
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("warning %q lacks %q", got, w)
				}
			}
			if strings.Contains(got, "\n") {
				t.Errorf("warning %q is not one line", got)
			}
		})
	}
	if tc := udpBufferWarning(small, fine, false); strings.Contains(tc, "wmem") {
		t.Errorf("warning %q names a limit that is fine", tc)
	}
	// The real check runs without failing wherever it runs.
	_ = CheckUDPBuffers()
}

func TestConfig(t *testing.T) {
	qc := quicConfig(transport.Config{MaxIncomingStreams: 64})
	if qc.MaxIncomingStreams != 64 || qc.MaxIncomingUniStreams != -1 {
		t.Errorf("streams %d/%d", qc.MaxIncomingStreams, qc.MaxIncomingUniStreams)
	}
	if qc.MaxStreamReceiveWindow != transport.DefaultStreamWindow || qc.InitialStreamReceiveWindow != 512<<10 {
		t.Errorf("stream window %d..%d", qc.InitialStreamReceiveWindow, qc.MaxStreamReceiveWindow)
	}
	if qc.MaxConnectionReceiveWindow != 64<<20 {
		t.Errorf("connection window %d", qc.MaxConnectionReceiveWindow)
	}
	// See timers: the keepalive goes out within its period, the idle
	// timer runs for the rest of MaxIdleTimeout.
	if qc.MaxIdleTimeout != transport.DefaultMaxIdleTimeout-transport.DefaultKeepAlivePeriod || qc.KeepAlivePeriod != transport.DefaultKeepAlivePeriod {
		t.Errorf("idle %v, keepalive %v", qc.MaxIdleTimeout, qc.KeepAlivePeriod)
	}
	for _, c := range []transport.Config{
		{},
		{MaxIdleTimeout: 2 * time.Second},
		{MaxIdleTimeout: 2 * time.Second, KeepAlivePeriod: time.Second},
		{MaxIdleTimeout: 30 * time.Second, KeepAlivePeriod: time.Second},
		{MaxIdleTimeout: 30 * time.Second, KeepAlivePeriod: 29 * time.Second},
	} {
		idle, every := timers(c)
		d := c.WithDefaults()
		if every <= 0 || every > d.KeepAlivePeriod || every > idle/2 || every+idle > d.MaxIdleTimeout {
			t.Errorf("%+v: keepalive every %v and idle timeout %v exceed MaxIdleTimeout %v", c, every, idle, d.MaxIdleTimeout)
		}
	}
	big := quicConfig(transport.Config{StreamWindow: 32 << 20})
	if big.MaxConnectionReceiveWindow != 128<<20 {
		t.Errorf("connection window for 32 MiB streams %d", big.MaxConnectionReceiveWindow)
	}
	tiny := quicConfig(transport.Config{StreamWindow: 64 << 10})
	if tiny.InitialStreamReceiveWindow != 64<<10 {
		t.Errorf("initial stream window %d above the maximum", tiny.InitialStreamReceiveWindow)
	}
}

// A gateway that restarts (same key, same UDP port) answers the first
// packet of a session it no longer knows with a stateless reset: the
// agent's session ends at once, not after MaxIdleTimeout. The same happens
// to an agent resumed after the gateway dropped its session.
func TestRestartResetsSessions(t *testing.T) {
	noLeaks(t)
	cfg := transport.Config{MaxIdleTimeout: 20 * time.Second, KeepAlivePeriod: 200 * time.Millisecond}
	key, err := ResetKey(serverTLS(t).Certificates[0].PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	opts := ListenOptions{ResetKey: key}
	pconn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pconn.LocalAddr().String()
	ln, err := Listen(pconn, serverTLS(t), cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, addr, clientTLS(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The session settles: the handshake's packets, and path MTU
	// discovery's large probes, are over; only keepalives go.
	time.Sleep(5 * cfg.KeepAlivePeriod)
	// The gateway process dies: its socket closes and nothing is sent.
	ln.shutdown()
	defer s.Close()
	var ln2 *Listener
	if err := pollFor(10*time.Second, func() error {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return err
		}
		// The new process derives the same key.
		key2, err := ResetKey(serverTLS(t).Certificates[0].PrivateKey)
		if err != nil {
			pc.Close()
			return err
		}
		ln2, err = Listen(pc, serverTLS(t), cfg, ListenOptions{ResetKey: key2})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	restarted := time.Now()
	select {
	case <-c.Context().Done():
	case <-time.After(cfg.MaxIdleTimeout / 4):
		t.Fatalf("the agent's session outlived the gateway's restart by %v", cfg.MaxIdleTimeout/4)
	}
	cause := context.Cause(c.Context())
	t.Logf("session ended %v after the restart: %v", time.Since(restarted), cause)
	var reset *quic.StatelessResetError
	if !errors.As(cause, &reset) {
		t.Errorf("cause %v, want a stateless reset", cause)
	}
}

// pollFor calls f until it succeeds or timeout passes, and returns its last
// error.
func pollFor(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestResetKey(t *testing.T) {
	k1, err := ResetKey(serverTLS(t).Certificates[0].PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	k2, _ := ResetKey(serverTLS(t).Certificates[0].PrivateKey)
	if *k1 != *k2 {
		t.Error("the key changes between derivations")
	}
	other, _, err := identity.LoadOrCreateKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if k3, err := ResetKey(other); err != nil || *k3 == *k1 {
		t.Errorf("another private key gives the same reset key (%v)", err)
	}
	if _, err := ResetKey(struct{}{}); err == nil {
		t.Error("a key that cannot be encoded gave a reset key")
	}
}

// The reason a peer gives for a close is printed and logged: terminal
// escapes and newlines in it arrive escaped.
func TestCloseReasonSanitized(t *testing.T) {
	noLeaks(t)
	c, s := pairVia(t, transport.Config{}, nil)
	s.CloseWithError(transport.CodeShuttingDown, "\x1b[31mred\nforged log line")
	select {
	case <-c.Context().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("peer session did not end")
	}
	cause := context.Cause(c.Context())
	t.Log(cause)
	var pc *transport.PeerClosedError
	if !errors.As(cause, &pc) || pc.Reason != `\x1b[31mred\nforged log line` {
		t.Errorf("reason %+v, want it escaped", pc)
	}
	if strings.ContainsAny(cause.Error(), "\x1b\n") {
		t.Errorf("cause %q holds control characters", cause)
	}
}

// Both ends of a session send with segmentation offload (GSO: one system
// call and one pass down the kernel's stack for up to 14 packets) wherever
// the kernel offers it. It is what keeps QUIC bulk affordable: without it
// a MiB costs about 2.2 times the CPU (BenchmarkBulk with
// QUIC_GO_DISABLE_GSO=true). quic-go uses it only on a socket it can see
// is UDP, so wrapping the socket (to count bytes, say) would lose it
// silently; this test would then fail.
func TestSessionsUseGSO(t *testing.T) {
	noLeaks(t)
	if why := noGSO(); why != "" {
		if testutil.InCI() && runtime.GOOS == "linux" {
			t.Fatalf("no GSO on this Linux machine under CI: %s", why)
		}
		t.Skip(why)
	}
	c, s := pairVia(t, transport.Config{}, nil)
	if !c.conn.ConnectionState().GSO || !s.conn.ConnectionState().GSO {
		t.Errorf("GSO: dialed session %v, accepted session %v", c.conn.ConnectionState().GSO, s.conn.ConnectionState().GSO)
	}
}
