package link

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/diglett/diglett/internal/identity"
	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/transport"
)

// Every test ends with the goroutine count back where it started: Close
// ends everything.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newCert is a self-signed certificate on a fresh key.
func newCert(t testing.TB) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c, err := identity.SelfSigned(key, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// members is a membership view: what one node believes the live peers
// are. Tests change it under the link.
type members struct {
	mu sync.Mutex
	m  map[string]Peer
}

func newMembers() *members { return &members{m: make(map[string]Peer)} }

func (v *members) set(p Peer) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.m[p.Node] = p
}

func (v *members) remove(node string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.m, node)
}

func (v *members) peer(node string) (Peer, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	p, ok := v.m[node]
	return p, ok
}

func (v *members) peers() []Peer {
	v.mu.Lock()
	defer v.mu.Unlock()
	var ps []Peer
	for _, p := range v.m {
		ps = append(ps, p)
	}
	return ps
}

// countingListener counts the connections it accepted.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

type handler func(ctx context.Context, from string, h Header, s transport.Stream)

// node is one running link.
type node struct {
	name   string
	cert   tls.Certificate
	view   *members
	link   *Link
	ln     *countingListener
	logs   *testutil.Buffer
	served chan error
}

// peer is n as it publishes itself.
func (n *node) peer() Peer { return Peer{Node: n.name, Addr: n.ln.Addr().String(), Cert: n.cert.Leaf} }

// start runs a link for name on addr ("127.0.0.1:0" for any port) with
// view as its membership; tweak may change its options.
func start(t testing.TB, name, addr string, cert tls.Certificate, view *members, h handler, tweak func(*Options)) *node {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	n := &node{name: name, cert: cert, view: view, ln: &countingListener{Listener: ln}, logs: &testutil.Buffer{}, served: make(chan error, 1)}
	o := Options{
		Node:   name,
		Cert:   cert,
		Peer:   view.peer,
		Peers:  view.peers,
		Handle: h,
		Logger: slog.New(slog.NewTextHandler(n.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if tweak != nil {
		tweak(&o)
	}
	n.link, err = New(o)
	if err != nil {
		t.Fatal(err)
	}
	go func() { n.served <- n.link.Serve(n.ln) }()
	t.Cleanup(func() { n.stop(t) })
	return n
}

// stop closes n's link and checks Serve returned nil; twice is fine.
func (n *node) stop(t testing.TB) {
	t.Helper()
	n.link.Close()
	if n.served == nil {
		return
	}
	select {
	case err := <-n.served:
		if err != nil {
			t.Errorf("%s: Serve: %v", n.name, err)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("%s: Serve did not return after Close", n.name)
	}
	n.served = nil
	if t.Failed() {
		t.Logf("%s logs:\n%s", n.name, n.logs)
	}
}

// cluster starts nodes that all see each other.
func cluster(t testing.TB, h handler, tweak func(*Options), names ...string) []*node {
	t.Helper()
	view := newMembers()
	var nodes []*node
	for _, name := range names {
		n := start(t, name, "127.0.0.1:0", newCert(t), view, h, tweak)
		view.set(n.peer())
		nodes = append(nodes, n)
	}
	return nodes
}

// echo copies a stream back to its opener.
func echo(ctx context.Context, from string, h Header, s transport.Stream) {
	io.Copy(s, s)
	s.CloseWrite()
}

// roundTrip writes msg on s, half-closes, and checks it comes back.
func roundTrip(s transport.Stream, msg string) error {
	s.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(s, msg); err != nil {
		return err
	}
	s.CloseWrite()
	got, err := io.ReadAll(s)
	if err != nil {
		return err
	}
	if string(got) != msg {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// pattern is n deterministic bytes from seed.
func pattern(seed uint64, n int) []byte {
	r := mrand.NewChaCha8([32]byte{byte(seed)})
	b := make([]byte, n)
	r.Read(b)
	return b
}

func TestTransfer(t *testing.T) {
	t.Parallel()
	const size = 10 << 20
	up, down := pattern(1, size), pattern(2, size)
	type seen struct {
		from string
		h    Header
		sum  [32]byte
		err  error
	}
	got := make(chan seen, 2)
	h := func(ctx context.Context, from string, h Header, s transport.Stream) {
		done := make(chan error, 1)
		go func() {
			_, err := s.Write(down)
			if err == nil {
				err = s.CloseWrite()
			}
			done <- err
		}()
		sum := sha256.New()
		_, err := io.Copy(sum, s)
		if werr := <-done; err == nil {
			err = werr
		}
		got <- seen{from: from, h: h, sum: [32]byte(sum.Sum(nil)), err: err}
	}
	nodes := cluster(t, h, nil, "a", "b", "c")
	a, c := nodes[0], nodes[2]

	for _, tc := range []struct {
		from *node
		to   string
		h    Header
	}{
		{a, "b", Header{Tunnel: "example", Visitor: "203.0.113.7:40000"}},
		{c, "a", Header{Tunnel: "other", Visitor: "[2001:db8::1]:443"}},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		s, err := tc.from.link.Open(ctx, tc.to, tc.h)
		cancel()
		if err != nil {
			t.Fatalf("%s -> %s: %v", tc.from.name, tc.to, err)
		}
		s.SetDeadline(time.Now().Add(60 * time.Second))
		werr := make(chan error, 1)
		go func() {
			_, err := s.Write(up)
			if err == nil {
				err = s.CloseWrite()
			}
			werr <- err
		}()
		sum := sha256.New()
		if _, err := io.Copy(sum, s); err != nil {
			t.Fatalf("%s -> %s: read: %v", tc.from.name, tc.to, err)
		}
		if err := <-werr; err != nil {
			t.Fatalf("%s -> %s: write: %v", tc.from.name, tc.to, err)
		}
		s.Close()
		if [32]byte(sum.Sum(nil)) != sha256.Sum256(down) {
			t.Fatalf("%s -> %s: the 10 MiB from the far side arrived changed", tc.from.name, tc.to)
		}
		sn := <-got
		if sn.err != nil {
			t.Fatalf("%s -> %s: far side: %v", tc.from.name, tc.to, sn.err)
		}
		if sn.sum != sha256.Sum256(up) {
			t.Fatalf("%s -> %s: the 10 MiB sent arrived changed", tc.from.name, tc.to)
		}
		if sn.from != tc.from.name || sn.h != tc.h {
			t.Fatalf("%s -> %s: Handle saw from=%q %+v, want from=%q %+v", tc.from.name, tc.to, sn.from, sn.h, tc.from.name, tc.h)
		}
		t.Logf("%s -> %s: 10 MiB each way, SHA-256 intact; Handle saw from=%q header %+v", tc.from.name, tc.to, sn.from, sn.h)
	}
}

func TestReuse(t *testing.T) {
	t.Parallel()
	view := newMembers()
	a := start(t, "a", "127.0.0.1:0", newCert(t), view, echo, nil)
	bCert := newCert(t)
	b := start(t, "b", "127.0.0.1:0", bCert, view, echo, nil)
	view.set(a.peer())
	view.set(b.peer())

	const opens = 200
	var wg sync.WaitGroup
	errs := make(chan error, opens)
	for i := range opens {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			s, err := a.link.Open(ctx, "b", Header{Tunnel: "example", Visitor: "127.0.0.1:1"})
			if err != nil {
				errs <- err
				return
			}
			defer s.Close()
			if err := roundTrip(s, fmt.Sprintf("stream %d", i)); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := b.ln.n.Load(); n != 1 {
		t.Fatalf("%d concurrent Opens made %d TCP connections to b, want 1", opens, n)
	}
	if s := a.link.Sessions(); len(s) != 1 {
		t.Fatalf("a's sessions %v, want only b's", s)
	}
	t.Logf("%d concurrent Opens from a to b echoed over 1 TCP connection; a.Sessions() = %v", opens, a.link.Sessions())

	// b restarts on the same address with the same key.
	addr := b.ln.Addr().String()
	b.stop(t)
	if err := testutil.Poll(10*time.Second, func() error {
		if _, ok := a.link.Sessions()["b"]; ok {
			return errors.New("a still has a session to b after b closed")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	b2 := start(t, "b", addr, bCert, view, echo, nil)
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, err := a.link.Open(ctx, "b", Header{Tunnel: "example"})
		cancel()
		if err != nil {
			t.Fatalf("open after b restarted: %v", err)
		}
		if err := roundTrip(s, fmt.Sprintf("after restart %d", i)); err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	if n := b2.ln.n.Load(); n != 1 {
		t.Fatalf("after b restarted, a made %d connections, want 1", n)
	}
	t.Logf("b restarted on %s: a noticed, dialled again once, and 3 more streams echoed", addr)

	// b publishes another address and key (b2 still runs): a's next
	// Open dials the new one at once, though its session to b2 lives,
	// and closes that session.
	b3 := start(t, "b", "127.0.0.1:0", newCert(t), view, echo, nil)
	view.set(b3.peer())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := a.link.Open(ctx, "b", Header{Tunnel: "example"})
	if err != nil {
		t.Fatalf("open after b published a new certificate: %v", err)
	}
	if err := roundTrip(s, "new key"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if n := b3.ln.n.Load(); n != 1 {
		t.Fatalf("after b's new certificate, a made %d connections to it, want 1", n)
	}
	if err := testutil.Poll(10*time.Second, func() error {
		if _, ok := b2.link.Sessions()["a"]; ok {
			return errors.New("a's superseded session to the old b is still up")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("b published a new address and certificate: a's next Open dialled it at once and echoed, and closed its session to the old one")
}

func TestRefusals(t *testing.T) {
	t.Parallel()
	var handled atomic.Int64
	h := func(ctx context.Context, from string, hd Header, s transport.Stream) {
		handled.Add(1)
		echo(ctx, from, hd, s)
	}
	nodes := cluster(t, h, nil, "a", "b")
	a, b := nodes[0], nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hd := Header{Tunnel: "example", Visitor: "127.0.0.1:1"}

	t.Run("no live member", func(t *testing.T) {
		_, err := a.link.Open(ctx, "gw-9", hd)
		if !errors.Is(err, ErrNoMember) || err.Error() != "link: no live member gw-9" {
			t.Fatalf("open to an unknown node: %v", err)
		}
		t.Logf("open to gw-9: %v", err)
	})

	t.Run("stranger", func(t *testing.T) {
		// s knows b, but nobody published s's certificate.
		sview := newMembers()
		sview.set(b.peer())
		s := start(t, "s", "127.0.0.1:0", newCert(t), sview, echo, nil)
		before := handled.Load()
		_, err := s.link.Open(ctx, "b", hd)
		if !errors.Is(err, ErrRefused) {
			t.Fatalf("a stranger's open: %v, want ErrRefused", err)
		}
		if !strings.Contains(b.logs.String(), "link: client certificate of no live member") {
			t.Fatalf("b did not log the refusal:\n%s", b.logs)
		}
		if handled.Load() != before {
			t.Fatal("b handled a stranger's stream")
		}
		// Nor may it pose as a member: a plain client with its key.
		conf := &tls.Config{Certificates: []tls.Certificate{s.cert}, InsecureSkipVerify: true, NextProtos: []string{ALPN}, MinVersion: tls.VersionTLS13}
		rawErr := rawDial(b.ln.Addr().String(), conf)
		if rawErr == nil {
			t.Fatal("b accepted a stranger's TLS connection")
		}
		t.Logf("stranger refused by b: %v; b logged the refusal; a raw TLS client with its key: %v", err, rawErr)
	})

	t.Run("other protocol", func(t *testing.T) {
		// a's own key, but the agent protocol's name: not the link.
		conf := &tls.Config{Certificates: []tls.Certificate{a.cert}, InsecureSkipVerify: true, NextProtos: []string{"diglett"}, MinVersion: tls.VersionTLS13}
		err := rawDial(b.ln.Addr().String(), conf)
		if err == nil {
			t.Fatal("b accepted a connection for another protocol")
		}
		conf.NextProtos = nil
		err2 := rawDial(b.ln.Addr().String(), conf)
		if err2 == nil {
			t.Fatal("b accepted a connection that named no protocol")
		}
		t.Logf("member key with ALPN diglett refused: %v; with no ALPN: %v", err, err2)
	})

	t.Run("impostor", func(t *testing.T) {
		// In c's view b published another certificate than the one b
		// presents.
		cview := newMembers()
		other := newCert(t)
		cview.set(Peer{Node: "b", Addr: b.ln.Addr().String(), Cert: other.Leaf})
		c := start(t, "c", "127.0.0.1:0", newCert(t), cview, echo, nil)
		_, err := c.link.Open(ctx, "b", hd)
		want := fmt.Sprintf("link: peer b at %s presented a certificate it did not publish", b.ln.Addr())
		if !errors.Is(err, ErrUnpublishedCertificate) || err.Error() != want {
			t.Fatalf("open to an impostor: %v, want %q", err, want)
		}
		t.Logf("open to a node presenting another key: %v", err)
	})

	t.Run("removed", func(t *testing.T) {
		s, err := a.link.Open(ctx, "b", hd)
		if err != nil {
			t.Fatal(err)
		}
		if err := roundTrip(s, "member"); err != nil {
			t.Fatal(err)
		}
		s.Close()
		// b no longer counts a as a member: a's live session is closed
		// at its next stream, and a cannot open a new one.
		b.view.remove("a")
		defer b.view.set(a.peer())
		before := handled.Load()
		s, err = a.link.Open(ctx, "b", hd)
		if err == nil {
			if err := roundTrip(s, "removed"); err == nil {
				t.Fatal("a stream from a removed member was served")
			}
			s.Close()
		}
		if err := testutil.Poll(10*time.Second, func() error {
			if _, ok := a.link.Sessions()["b"]; ok {
				return errors.New("a's session to b is still up")
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		_, err = a.link.Open(ctx, "b", hd)
		if !errors.Is(err, ErrRefused) {
			t.Fatalf("a removed member's new session: %v, want ErrRefused", err)
		}
		if handled.Load() != before {
			t.Fatal("b handled a stream of a removed member")
		}
		t.Logf("a removed from b's members: its session was closed, its next dial refused: %v", err)
	})
}

// rawDial makes a TLS connection to addr and waits for the link's
// accepted byte.
func rawDial(addr string, conf *tls.Config) error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, conf)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil {
		return err
	}
	return nil
}

// rawStream opens a stream from n to node with no header.
func rawStream(t *testing.T, n *node, to string) transport.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, _ := n.view.peer(to)
	sess, _, err := n.link.session(ctx, to, p)
	if err != nil {
		t.Fatal(err)
	}
	s, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// waitReset checks that the peer resets s: a read fails with an error
// other than EOF within bound.
func waitReset(t *testing.T, s transport.Stream, what string) {
	t.Helper()
	s.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.ReadAll(s)
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		t.Fatalf("%s: read ended with %v, want a reset", what, err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: never reset: %v", what, err)
	}
}

func TestBounds(t *testing.T) {
	t.Parallel()
	const limit = 3
	var inHandle atomic.Int64
	release := make(chan struct{})
	h := func(ctx context.Context, from string, hd Header, s transport.Stream) {
		inHandle.Add(1)
		defer inHandle.Add(-1)
		select {
		case <-release:
		case <-ctx.Done():
		}
	}
	nodes := cluster(t, h, func(o *Options) {
		o.DialTimeout = 300 * time.Millisecond
		o.MaxStreamsPerPeer = limit
	}, "a", "b")
	a, b := nodes[0], nodes[1]

	t.Run("no header", func(t *testing.T) {
		s := rawStream(t, a, "b")
		start := time.Now()
		waitReset(t, s, "a stream with no header")
		if !strings.Contains(b.logs.String(), "link: no stream header in time") {
			t.Fatalf("b did not log the timeout:\n%s", b.logs)
		}
		t.Logf("a stream that sent no header was reset after %v (DialTimeout 300ms)", time.Since(start).Round(time.Millisecond))
	})

	t.Run("malformed", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			raw  []byte
		}{
			{"over the limit", binary.BigEndian.AppendUint16(nil, MaxHeaderSize)},
			{"wrong version", []byte{0, 5, 9, 0, 1, 'a', 0}},
			{"bad tunnel name", []byte{0, 7, HeaderVersion, 0, 2, '.', '/', 0, 0}},
			{"field past the end", []byte{0, 5, HeaderVersion, 0, 9, 'a', 'b'}},
		} {
			s := rawStream(t, a, "b")
			if _, err := s.Write(tc.raw); err != nil {
				t.Fatal(err)
			}
			waitReset(t, s, tc.name)
			t.Logf("%s: header % x reset", tc.name, tc.raw)
		}
		if n := strings.Count(b.logs.String(), "link: malformed stream header"); n != 4 {
			t.Fatalf("b logged %d malformed headers, want 4:\n%s", n, b.logs)
		}
		if inHandle.Load() != 0 {
			t.Fatal("a malformed header reached Handle")
		}
	})

	t.Run("streams per peer", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var open []transport.Stream
		for range limit {
			s, err := a.link.Open(ctx, "b", Header{Tunnel: "example"})
			if err != nil {
				t.Fatal(err)
			}
			open = append(open, s)
		}
		if err := testutil.Poll(10*time.Second, func() error {
			if n := inHandle.Load(); n != limit {
				return fmt.Errorf("%d streams in Handle, want %d", n, limit)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		over, err := a.link.Open(ctx, "b", Header{Tunnel: "example"})
		if err != nil {
			t.Fatal(err)
		}
		waitReset(t, over, "a stream over the limit")
		if !strings.Contains(b.logs.String(), "link: too many streams from a peer") {
			t.Fatalf("b did not log the refusal:\n%s", b.logs)
		}
		close(release)
		if err := testutil.Poll(10*time.Second, func() error {
			b.link.mu.Lock()
			defer b.link.mu.Unlock()
			if pl := b.link.handling["a"]; pl != nil {
				return fmt.Errorf("%d streams of a still being handled", pl.n)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		for _, s := range open {
			s.Close()
		}
		// Room again: a new stream is handled (Handle returns at once now).
		s, err := a.link.Open(ctx, "b", Header{Tunnel: "example"})
		if err != nil {
			t.Fatal(err)
		}
		s.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(s); err != nil {
			t.Fatalf("a stream under the limit again: %v", err)
		}
		t.Logf("%d streams handled at once, the next one reset; once they ended a new stream was served", limit)
	})
}

func TestClose(t *testing.T) {
	t.Parallel()
	var inHandle atomic.Int64
	h := func(ctx context.Context, from string, hd Header, s transport.Stream) {
		inHandle.Add(1)
		defer inHandle.Add(-1)
		<-ctx.Done() // a handler that waits for the session to end
	}
	nodes := cluster(t, h, nil, "a", "b")
	a, b := nodes[0], nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var streams []transport.Stream
	for range 10 {
		s, err := a.link.Open(ctx, "b", Header{Tunnel: "example"})
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, s)
	}
	if err := testutil.Poll(10*time.Second, func() error {
		if n := inHandle.Load(); n != 10 {
			return fmt.Errorf("%d in Handle", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := b.link.Sessions()["a"]; got != 10 {
		t.Fatalf("b.Sessions()[a] = %d, want 10", got)
	}
	b.stop(t)
	if n := inHandle.Load(); n != 0 {
		t.Fatalf("%d Handle calls still running after Close", n)
	}
	for _, s := range streams {
		s.SetReadDeadline(time.Now().Add(10 * time.Second))
		io.ReadAll(s) // ends: reset, or EOF as the session closed
		s.Close()
	}
	if _, err := b.link.Open(ctx, "a", Header{Tunnel: "example"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("open on a closed link: %v", err)
	}
	if err := b.link.Serve(newListener(t)); err != nil {
		t.Fatalf("Serve after Close: %v", err)
	}
	t.Logf("Close of b with 10 streams in Handle: every Handle returned, Open and Serve after it refuse; goroutines checked by the test binary")
}

func newListener(t *testing.T) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func TestNewChecks(t *testing.T) {
	t.Parallel()
	cert := newCert(t)
	v := newMembers()
	ok := Options{Node: "a", Cert: cert, Peer: v.peer, Peers: v.peers, Handle: echo}
	for _, tc := range []struct {
		name  string
		tweak func(*Options)
	}{
		{"no node", func(o *Options) { o.Node = "" }},
		{"no cert", func(o *Options) { o.Cert = tls.Certificate{} }},
		{"no peers", func(o *Options) { o.Peers = nil }},
		{"no handler", func(o *Options) { o.Handle = nil }},
		{"negative timeout", func(o *Options) { o.DialTimeout = -1 }},
	} {
		o := ok
		tc.tweak(&o)
		if _, err := New(o); err == nil {
			t.Errorf("%s: accepted", tc.name)
		} else {
			t.Logf("%s: %v", tc.name, err)
		}
	}
	l, err := New(ok)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
}

func TestHeaderRoundTrip(t *testing.T) {
	t.Parallel()
	for _, h := range []Header{
		{Tunnel: "a"},
		{Tunnel: "example", Visitor: "203.0.113.7:40000"},
		{Tunnel: strings.Repeat("x", 63), Visitor: strings.Repeat("1", 64)},
	} {
		b, err := AppendHeader(nil, h)
		if err != nil {
			t.Fatal(err)
		}
		r := bytes.NewReader(append(b, "rest"...))
		got, err := ReadHeader(r)
		if err != nil || got != h {
			t.Fatalf("%+v: read %+v, %v", h, got, err)
		}
		if r.Len() != 4 {
			t.Fatalf("%+v: read %d bytes past the header", h, 4-r.Len())
		}
	}
	for _, h := range []Header{{}, {Tunnel: "../x"}, {Tunnel: "a", Visitor: strings.Repeat("1", 65)}} {
		if _, err := AppendHeader(nil, h); err == nil {
			t.Errorf("%+v: encoded", h)
		}
	}
	t.Logf("headers round-trip, read no further than themselves; bad ones are not written")
}

// FuzzHeader feeds arbitrary bytes to the header decoder: it must never
// panic, never read past the header, and what it accepts must encode to
// exactly the bytes it read.
func FuzzHeader(f *testing.F) {
	b, _ := AppendHeader(nil, Header{Tunnel: "example", Visitor: "127.0.0.1:4000"})
	f.Add(b)
	f.Add([]byte{0, 1, 1})
	f.Add([]byte{0xff, 0xff})
	f.Add([]byte{0, 5, 1, 0xff, 0xff, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		h, err := ReadHeader(r)
		if err != nil {
			return
		}
		used := len(in) - r.Len()
		enc, err := AppendHeader(nil, h)
		if err != nil {
			t.Fatalf("accepted %+v, which does not encode: %v", h, err)
		}
		if !bytes.Equal(enc, in[:used]) {
			t.Fatalf("accepted % x as %+v, which encodes as % x", in[:used], h, enc)
		}
	})
}

// BenchmarkLinkStream measures bytes through one link stream against a
// plain loopback TCP connection in the same run.
func BenchmarkLinkStream(b *testing.B) {
	const chunk = 64 << 10
	buf := pattern(3, chunk)
	run := func(b *testing.B, w io.Writer, closeWrite func() error, drained <-chan error) {
		b.SetBytes(chunk)
		b.ResetTimer()
		for b.Loop() {
			if _, err := w.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		if err := closeWrite(); err != nil {
			b.Fatal(err)
		}
		if err := <-drained; err != nil {
			b.Fatal(err)
		}
	}
	b.Run("link", func(b *testing.B) {
		drained := make(chan error, 1)
		h := func(ctx context.Context, from string, hd Header, s transport.Stream) {
			_, err := io.Copy(io.Discard, s)
			drained <- err
		}
		nodes := cluster(b, h, nil, "a", "b")
		s, err := nodes[0].link.Open(context.Background(), "b", Header{Tunnel: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		run(b, s, s.CloseWrite, drained)
	})
	b.Run("direct", func(b *testing.B) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		drained := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				drained <- err
				return
			}
			defer c.Close()
			_, err = io.Copy(io.Discard, c)
			drained <- err
		}()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		run(b, c, c.(*net.TCPConn).CloseWrite, drained)
	})
}
