package tlsmux

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/transporttest"
)

func serverTLS(t *testing.T) *tls.Config { return testutil.ServerTLS(t) }

func clientTLS() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
}

// pairOver connects a client and a server session over real TCP on
// loopback, through wrap (which may interpose on the client's connection).
func pairOver(t *testing.T, cfg transport.Config, wrap func(net.Conn) net.Conn) (*Session, *Session) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type res struct {
		s   *Session
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- res{nil, err}
			return
		}
		s, err := Server(ctx, c, serverTLS(t), cfg)
		ch <- res{s, err}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if wrap != nil {
		raw = wrap(raw)
	}
	c, err := Client(ctx, raw, clientTLS(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { c.Close(); r.s.Close() })
	return c, r.s
}

func TestConformance(t *testing.T) {
	const maxIncoming = 64
	transporttest.Run(t, func(t *testing.T) (transport.Session, transport.Session) {
		c, s := pairOver(t, transport.Config{MaxIncomingStreams: maxIncoming}, nil)
		return c, s
	}, transporttest.Options{MaxIncoming: maxIncoming})
}

// serveOne accepts one connection on a loopback listener and runs the
// server handshake on it within timeout; errc gets its result.
func serveOne(t *testing.T, timeout time.Duration) (addr string, errc <-chan error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		s, err := Server(ctx, c, serverTLS(t), transport.Config{})
		if err == nil {
			s.Close()
		}
		ch <- err
	}()
	return ln.Addr().String(), ch
}

func TestRefusesOldTLS(t *testing.T) {
	addr, errc := serveOne(t, 10*time.Second)
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12})
	if err == nil {
		c.Close()
		t.Fatal("TLS 1.2 client accepted")
	}
	if err := <-errc; err == nil {
		t.Fatal("server accepted a TLS 1.2 handshake")
	}
}

func TestHandshakeTimeout(t *testing.T) {
	addr, errc := serveOne(t, 200*time.Millisecond)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close() // connected, silent
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("handshake with a silent peer succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handshake with a silent peer did not time out")
	}
}

// blackhole passes bytes until cut, then silently drops everything, like a
// peer that vanished without FIN or RST.
type blackhole struct {
	net.Conn
	mu  sync.Mutex
	cut bool
}

func (b *blackhole) Write(p []byte) (int, error) {
	b.mu.Lock()
	cut := b.cut
	b.mu.Unlock()
	if cut {
		return len(p), nil
	}
	return b.Conn.Write(p)
}

func (b *blackhole) Read(p []byte) (int, error) {
	for {
		n, err := b.Conn.Read(p)
		b.mu.Lock()
		cut := b.cut
		b.mu.Unlock()
		if !cut || err != nil {
			return n, err
		}
	}
}

func TestDeadPeerDetected(t *testing.T) {
	var bh *blackhole
	idle := 900 * time.Millisecond
	c, s := pairOver(t, transport.Config{MaxIdleTimeout: idle}, func(c net.Conn) net.Conn {
		bh = &blackhole{Conn: c}
		return bh
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
	io.ReadFull(st, make([]byte, 1))

	bh.mu.Lock()
	bh.cut = true
	bh.mu.Unlock()
	for name, sess := range map[string]*Session{"client": c, "server": s} {
		select {
		case <-sess.Context().Done():
		case <-time.After(10 * idle):
			t.Fatalf("%s did not notice the dead peer", name)
		}
	}
}

// writeCounter counts the write calls made on a connection.
type writeCounter struct {
	net.Conn
	writes atomic.Int64
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.writes.Add(1)
	return w.Conn.Write(p)
}

// A large write on a stream leaves in far fewer system calls than the TLS
// records it takes: each batch of frames goes out in one call.
func TestBatchesLeaveInOneWrite(t *testing.T) {
	var wc *writeCounter
	c, s := pairOver(t, transport.Config{}, func(raw net.Conn) net.Conn {
		wc = &writeCounter{Conn: raw}
		return wc
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const size = 4 << 20
	got := make(chan int64, 1)
	go func() {
		st, err := s.AcceptStream(ctx)
		if err != nil {
			got <- -1
			return
		}
		n, _ := io.Copy(io.Discard, st)
		got <- n
	}()
	st, err := c.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before := wc.writes.Load()
	if _, err := st.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	st.CloseWrite()
	if n := <-got; n != size {
		t.Fatalf("peer read %d bytes, want %d", n, size)
	}
	records := size / (16 << 10)
	writes := wc.writes.Load() - before
	t.Logf("%d MiB in %d write calls (%d TLS records at least)", size>>20, writes, records)
	if writes > int64(records/4) {
		t.Fatalf("%d write calls for %d records: batches are not gathered", writes, records)
	}
}

// TestConnectionState: over TLS the session reports the state its
// connection negotiated (read from it, not kept); over another
// connection, the state it was given.
func TestConnectionState(t *testing.T) {
	c, s := pairOver(t, transport.Config{}, nil)
	for _, sess := range []*Session{c, s} {
		st := sess.ConnectionState()
		if !st.HandshakeComplete || st.Version != tls.VersionTLS13 {
			t.Fatalf("state over TLS: complete %v, version %x", st.HandshakeComplete, st.Version)
		}
	}
	if len(c.ConnectionState().PeerCertificates) == 0 {
		t.Fatal("the client's state has no peer certificate")
	}
	a, b := net.Pipe()
	defer b.Close()
	given := tls.ConnectionState{Version: tls.VersionTLS13, ServerName: "given.test"}
	ps, err := New(a, given, true, transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	if got := ps.ConnectionState(); got.ServerName != "given.test" || got.Version != tls.VersionTLS13 {
		t.Fatalf("state over a pipe: %+v, want the one given", got)
	}
}

// TestContextOnDemand: the session's context is made when first asked
// for, and ends with the session's first cause whether it was asked for
// before or after the end.
func TestContextOnDemand(t *testing.T) {
	for _, before := range []bool{true, false} {
		a, b := net.Pipe()
		defer b.Close()
		s, err := NewIdle(a, tls.ConnectionState{}, false, transport.Config{}.WithDefaults(), Idle{})
		if err != nil {
			t.Fatal(err)
		}
		var ctx context.Context
		if before {
			ctx = s.Context()
			if ctx.Err() != nil {
				t.Fatal("the context of a live session has ended")
			}
		} else if s.ctx != nil {
			t.Fatal("a session never asked for its context made one")
		}
		s.CloseWithError(transport.CodeNone, "bye")
		if !before {
			ctx = s.Context()
		}
		<-ctx.Done()
		if cause := context.Cause(ctx); !errors.Is(cause, transport.ErrSessionClosed) || !strings.Contains(cause.Error(), "bye") {
			t.Errorf("asked for before the end %v: cause %v, want the close's", before, cause)
		}
	}
}
