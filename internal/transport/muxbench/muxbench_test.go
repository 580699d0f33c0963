package muxbench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	hyamux "github.com/hashicorp/yamux"
	lyamux "github.com/libp2p/go-yamux/v5"
	"github.com/xtaci/smux"

	"github.com/diglett/diglett/internal/transport/mux"
)

// Run with:
//
//	go test -run '^$' -bench . -benchtime 2s -count 5 ./internal/transport/muxbench/
//
// Sub-benchmark names read <mux>/<setting>/<shape>: "yamux" is
// github.com/hashicorp/yamux, "libp2p-yamux" is github.com/libp2p/go-yamux/v5
// and "smux" is github.com/xtaci/smux with protocol version 2; "mux" is
// diglett's own internal/transport/mux (the yamux wire format). "direct" is a
// plain TLS 1.3 connection per stream, without a multiplexer.

const (
	chunkSize = 32 << 10 // bytes per Write in bulk transfers: io.Copy's buffer size
	opBytes   = 1 << 20  // bytes moved per BenchmarkBulk op, over all streams
	msgSize   = 100      // request and reply size in BenchmarkRequest
	smuxTotal = 64 << 20 // smux MaxReceiveBuffer: never binds before the stream windows
	wanRTT    = 20 * time.Millisecond
)

// BenchmarkBulk measures one-way throughput over loopback: the client writes
// 1 MiB per op in 32 KiB writes and the server reads all of it. streams=8
// splits the bytes over 8 concurrent streams of one session (8 TLS
// connections for direct).
func BenchmarkBulk(b *testing.B) {
	for _, c := range bulkCandidates() {
		for _, n := range []int{1, 8} {
			b.Run(fmt.Sprintf("%s/streams=%d", c.name, n), func(b *testing.B) {
				benchBulk(b, c.newLink(b, 0), n)
			})
		}
	}
}

// BenchmarkBulkRTT measures the same single-stream transfer through a relay
// that delays each direction by 10 ms (20 ms round trip, no bandwidth limit),
// where the stream window, not the CPU, bounds a stream's throughput. direct
// only shows the relay's own ceiling: the relay buffers without limit, so the
// kernel's TCP windows never bind.
func BenchmarkBulkRTT(b *testing.B) {
	for _, c := range bulkCandidates() {
		b.Run(fmt.Sprintf("%s/rtt=%s", c.name, wanRTT), func(b *testing.B) {
			benchBulk(b, c.newLink(b, wanRTT), 1)
		})
	}
}

// BenchmarkRequest measures small request/response latency with each mux's
// default window (a 100-byte message never fills one). pingpong sends 100
// bytes and reads a 100-byte echo on one long-lived stream. open does what
// the tunnel does per visitor connection: open a new stream, write 100 bytes,
// half-close, read the 100-byte reply, close (a new TCP+TLS connection per
// request for direct). open-nohalfclose is the same without the half-close:
// the server reads exactly 100 bytes; it is the only stream-per-request
// shape smux survives (see TestSmuxHalfCloseLosesReply).
func BenchmarkRequest(b *testing.B) {
	for _, c := range requestCandidates() {
		b.Run(c.name+"/pingpong", func(b *testing.B) { benchPingPong(b, c.newLink(b, 0)) })
		b.Run(c.name+"/open", func(b *testing.B) {
			if c.lossyHalfClose {
				b.Skip("the reply is lost: see TestSmuxHalfCloseLosesReply")
			}
			benchOpen(b, c.newLink(b, 0), true)
		})
		b.Run(c.name+"/open-nohalfclose", func(b *testing.B) { benchOpen(b, c.newLink(b, 0), false) })
	}
}

// TestHarness runs every configuration briefly, checking that the bytes
// arrive intact and that tearing a link down leaves no goroutine behind.
func TestHarness(t *testing.T) {
	all := bulkCandidates()
	for _, c := range requestCandidates()[1:] { // direct is in both lists
		c.name += "/default"
		all = append(all, c)
	}
	for _, c := range all {
		t.Run(c.name, func(t *testing.T) {
			base := runtime.NumGoroutine()
			func() {
				l := c.newLink(t, 0)
				defer l.close()
				clients, servers := openStreams(t, l, 3)
				defer closeStreams(clients, servers)
				if err := transfer(clients, servers, 3*opBytes+5, l.close); err != nil {
					t.Fatal(err)
				}
			}()
			runs := []func(testing.TB, *link, int){
				pingPong,
				func(tb testing.TB, l *link, n int) { openPerRequest(tb, l, n, false) },
			}
			if !c.lossyHalfClose {
				runs = append(runs, func(tb testing.TB, l *link, n int) { openPerRequest(tb, l, n, true) })
			}
			for _, run := range runs {
				func() {
					l := c.newLink(t, 0)
					defer l.close()
					run(t, l, 20)
				}()
			}
			waitGoroutines(t, base)
		})
	}
	t.Run("relay", func(t *testing.T) {
		base := runtime.NumGoroutine()
		l := directLink(t, 2*time.Millisecond)
		clients, servers := openStreams(t, l, 1)
		err := transfer(clients, servers, opBytes, l.close)
		closeStreams(clients, servers)
		l.close()
		if err != nil {
			t.Fatal(err)
		}
		waitGoroutines(t, base)
	})
}

// TestSmuxHalfCloseLosesReply pins the smux defect that rules it out for
// stream-per-request with half-close: once both ends have sent FIN, smux
// frees the stream and drops whatever the reader had not read yet, so a
// reply written just before the server's Close is lost. If this test fails,
// a newer smux keeps the reply: re-enable BenchmarkRequest/smux/open.
func TestSmuxHalfCloseLosesReply(t *testing.T) {
	c, s, stop := tlsPair(t, 0)
	defer stop()
	cfg := smuxConfig(1 << 20)
	cs, err := smux.Client(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	ss, err := smux.Server(s, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()

	cst, err := cs.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	defer cst.Close()
	if _, err := cst.Write(payload[:msgSize]); err != nil {
		t.Fatal(err)
	}
	if err := cst.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	sst, err := ss.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	if err := respond(sst, true); err != nil {
		t.Fatal(err)
	}
	// Let the reply and the server's FIN reach the client before it reads,
	// as they do whenever the client is a little slow.
	for deadline := time.Now().Add(2 * time.Second); cs.NumStreams() > 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	n, err := io.ReadFull(cst, make([]byte, msgSize))
	if err == nil {
		t.Fatalf("smux kept the %d-byte reply: the half-close defect is fixed, re-enable BenchmarkRequest/smux/open", n)
	}
	t.Logf("client read %d of %d reply bytes, then %v", n, msgSize, err)
}

func benchBulk(b *testing.B, l *link, n int) {
	defer l.close()
	clients, servers := openStreams(b, l, n)
	defer closeStreams(clients, servers)
	b.SetBytes(opBytes)
	b.ResetTimer()
	if err := transfer(clients, servers, int64(b.N)*opBytes/int64(n), l.close); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
}

func benchPingPong(b *testing.B, l *link) {
	defer l.close()
	pingPong(b, l, b.N)
}

func benchOpen(b *testing.B, l *link, halfClose bool) {
	defer l.close()
	openPerRequest(b, l, b.N, halfClose)
}

// pingPong sends n 100-byte messages over one stream, each echoed back
// before the next is sent.
func pingPong(tb testing.TB, l *link, n int) {
	clients, servers := openStreams(tb, l, 1)
	c, s := clients[0], servers[0]
	defer closeStreams(clients, servers)
	echoed := make(chan error, 1)
	go func() { echoed <- echo(s) }()

	msg, reply := payload[:msgSize], make([]byte, msgSize)
	resetTimer(tb)
	for range n {
		if _, err := c.Write(msg); err != nil {
			tb.Fatal(err)
		}
		if _, err := io.ReadFull(c, reply); err != nil {
			tb.Fatal(err)
		}
	}
	stopTimer(tb)
	if err := c.CloseWrite(); err != nil {
		tb.Fatal(err)
	}
	if err := <-echoed; err != nil {
		tb.Fatal(err)
	}
}

// echo copies msgSize-byte messages back until the peer half-closes.
func echo(s stream) error {
	buf := make([]byte, msgSize)
	for {
		if _, err := io.ReadFull(s, buf); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		if _, err := s.Write(buf); err != nil {
			return err
		}
	}
}

// openPerRequest makes n requests, each on a stream of its own, half-closed
// after the request if halfClose.
func openPerRequest(tb testing.TB, l *link, n int, halfClose bool) {
	var wg sync.WaitGroup
	var serverErr firstError
	wg.Go(func() {
		for {
			s, err := l.accept()
			if err != nil {
				return
			}
			wg.Go(func() { serverErr.set(respond(s, halfClose)) })
		}
	})
	defer wg.Wait()
	defer l.close() // ends the accept loop; runs before wg.Wait

	msg, reply := payload[:msgSize], make([]byte, msgSize)
	resetTimer(tb)
	for range n {
		if err := request(l, msg, reply, halfClose); err != nil {
			tb.Fatal(err)
		}
	}
	stopTimer(tb)
	if err := serverErr.get(); err != nil {
		tb.Fatal(err)
	}
}

func request(l *link, msg, reply []byte, halfClose bool) error {
	s, err := l.open()
	if err != nil {
		return err
	}
	defer s.Close()
	if _, err := s.Write(msg); err != nil {
		return err
	}
	if halfClose {
		if err := s.CloseWrite(); err != nil {
			return err
		}
	}
	if _, err := io.ReadFull(s, reply); err != nil {
		return fmt.Errorf("reading reply: %w", err)
	}
	return nil
}

// respond reads a request, up to the peer's half-close if halfClose or else
// msgSize bytes, replies with as many bytes and closes.
func respond(s stream, halfClose bool) error {
	defer s.Close()
	req := make([]byte, msgSize)
	if halfClose {
		var err error
		if req, err = io.ReadAll(io.LimitReader(s, 2*msgSize)); err != nil {
			return err
		}
	} else if _, err := io.ReadFull(s, req); err != nil {
		return err
	}
	if len(req) != msgSize {
		return fmt.Errorf("request of %d bytes, want %d", len(req), msgSize)
	}
	_, err := s.Write(req)
	return err
}

// openStreams opens n streams on l and returns both ends of each.
func openStreams(tb testing.TB, l *link, n int) (clients, servers []stream) {
	tb.Helper()
	type accepted struct {
		s   stream
		err error
	}
	acc := make(chan accepted, n)
	go func() {
		for range n {
			s, err := l.accept()
			acc <- accepted{s, err}
			if err != nil {
				return
			}
		}
	}()
	for range n {
		s, err := l.open()
		if err != nil {
			tb.Fatal(err)
		}
		clients = append(clients, s)
	}
	for range n {
		a := <-acc
		if a.err != nil {
			closeStreams(clients, servers)
			tb.Fatal(a.err)
		}
		servers = append(servers, a.s)
	}
	return clients, servers
}

func closeStreams(sets ...[]stream) {
	for _, set := range sets {
		for _, s := range set {
			s.Close()
		}
	}
}

// transfer sends per bytes from every client stream to its server end, then
// waits for a one-byte acknowledgement from each server end. On the first
// error it calls abort, which must unblock the other streams.
func transfer(clients, servers []stream, per int64, abort func()) error {
	errc := make(chan error, len(clients)+len(servers))
	for _, s := range servers {
		go func() { errc <- sink(s, per) }()
	}
	for _, c := range clients {
		go func() { errc <- source(c, per) }()
	}
	var first error
	for range cap(errc) {
		if err := <-errc; err != nil && first == nil {
			first = err
			abort()
		}
	}
	return first
}

func source(c stream, n int64) error {
	for n > 0 {
		w := int(min(n, chunkSize))
		if _, err := c.Write(payload[:w]); err != nil {
			return err
		}
		n -= int64(w)
	}
	var ack [1]byte
	_, err := io.ReadFull(c, ack[:])
	return err
}

func sink(s stream, n int64) error {
	buf := make([]byte, chunkSize)
	for n > 0 {
		r, err := s.Read(buf[:min(n, chunkSize)])
		n -= int64(r)
		if err != nil && n > 0 {
			return fmt.Errorf("%d bytes short: %w", n, err)
		}
	}
	_, err := s.Write([]byte{1})
	return err
}

// payload is what clients write; its content does not matter under TLS.
var payload = func() []byte {
	p := make([]byte, chunkSize)
	rand.Read(p)
	return p
}()

// stream is what the benchmarks need of a multiplexed stream or of a plain
// TLS connection.
type stream interface {
	io.ReadWriteCloser
	// CloseWrite half-closes: the peer reads EOF; this end can still read.
	CloseWrite() error
}

// link joins a client, which opens streams, to a server, which accepts them.
type link struct {
	open   func() (stream, error)
	accept func() (stream, error)
	close  func() // tears everything down; accept then fails
}

// candidate is one transport configuration under test.
type candidate struct {
	name    string
	newLink func(tb testing.TB, rtt time.Duration) *link
	// lossyHalfClose: after CloseWrite, a reply that arrives together with
	// the peer's close can be dropped unread.
	lossyHalfClose bool
}

func bulkCandidates() []candidate {
	cs := []candidate{{"direct", directLink, false}}
	for _, w := range []int{256 << 10, 1 << 20, 4 << 20, 16 << 20} {
		cs = append(cs, candidate{"yamux/win=" + size(w), hashicorpLink(hashicorpConfig(w)), false})
	}
	for _, w := range []int{256 << 10, 1 << 20, 4 << 20, 16 << 20} {
		cs = append(cs, candidate{"libp2p-yamux/win=" + size(w), libp2pLink(libp2pConfig(w)), false})
	}
	for _, w := range []int{64 << 10, 1 << 20, 4 << 20} {
		cs = append(cs, candidate{"smux/buf=" + size(w), smuxLink(smuxConfig(w)), true})
	}
	cs = append(cs, candidate{"mux/max=16MiB", diglettLink(mux.Config{}), false})
	return cs
}

func requestCandidates() []candidate {
	sc := smux.DefaultConfig()
	sc.Version = 2
	return []candidate{
		{"direct", directLink, false},
		{"yamux", hashicorpLink(hashicorpConfig(0)), false},
		{"libp2p-yamux", libp2pLink(libp2pConfig(0)), false},
		{"smux", smuxLink(sc), true},
		{"mux", diglettLink(mux.Config{}), false},
	}
}

func size(n int) string {
	if n%(1<<20) == 0 {
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprintf("%dKiB", n>>10)
}

// hashicorpConfig is yamux's default with logging off and, if win > 0, that
// stream window.
func hashicorpConfig(win int) *hyamux.Config {
	c := hyamux.DefaultConfig()
	c.LogOutput = io.Discard
	if win > 0 {
		c.MaxStreamWindowSize = uint32(win)
	}
	return c
}

func libp2pConfig(win int) *lyamux.Config {
	c := lyamux.DefaultConfig()
	c.LogOutput = io.Discard
	if win > 0 {
		c.MaxStreamWindowSize = uint32(win)
	}
	return c
}

func smuxConfig(buf int) *smux.Config {
	c := smux.DefaultConfig()
	c.Version = 2
	c.MaxStreamBuffer = buf
	c.MaxReceiveBuffer = smuxTotal
	return c
}

// muxSession is the part of a multiplexer session the benchmarks use.
type muxSession interface {
	open() (stream, error)
	accept() (stream, error)
	io.Closer
}

type hashicorpSession struct{ *hyamux.Session }

func (s hashicorpSession) open() (stream, error) {
	st, err := s.OpenStream()
	if err != nil {
		return nil, err
	}
	return hashicorpStream{st}, nil
}

func (s hashicorpSession) accept() (stream, error) {
	st, err := s.AcceptStream()
	if err != nil {
		return nil, err
	}
	return hashicorpStream{st}, nil
}

// hashicorpStream adds CloseWrite: hashicorp/yamux's Close is already a
// half-close (it sends FIN and reads go on until the peer's FIN).
type hashicorpStream struct{ *hyamux.Stream }

func (s hashicorpStream) CloseWrite() error { return s.Stream.Close() }

type libp2pSession struct{ *lyamux.Session }

func (s libp2pSession) open() (stream, error) {
	st, err := s.OpenStream(context.Background())
	if err != nil {
		return nil, err
	}
	return st, nil
}

func (s libp2pSession) accept() (stream, error) {
	st, err := s.AcceptStream()
	if err != nil {
		return nil, err
	}
	return st, nil
}

type diglettSession struct{ *mux.Session }

func (s diglettSession) open() (stream, error) {
	st, err := s.OpenStream(context.Background())
	if err != nil {
		return nil, err
	}
	return st, nil
}

func (s diglettSession) accept() (stream, error) {
	st, err := s.AcceptStream(context.Background())
	if err != nil {
		return nil, err
	}
	return st, nil
}

func diglettLink(cfg mux.Config) func(testing.TB, time.Duration) *link {
	return muxLink(func(c, s net.Conn) (muxSession, muxSession, error) {
		return diglettSession{mux.Client(c, cfg)}, diglettSession{mux.Server(s, cfg)}, nil
	})
}

type smuxSession struct{ *smux.Session }

func (s smuxSession) open() (stream, error) {
	st, err := s.OpenStream()
	if err != nil {
		return nil, err
	}
	return st, nil
}

func (s smuxSession) accept() (stream, error) {
	st, err := s.AcceptStream()
	if err != nil {
		return nil, err
	}
	return st, nil
}

func hashicorpLink(cfg *hyamux.Config) func(testing.TB, time.Duration) *link {
	return muxLink(func(c, s net.Conn) (muxSession, muxSession, error) {
		cs, err := hyamux.Client(c, cfg)
		if err != nil {
			return nil, nil, err
		}
		ss, err := hyamux.Server(s, cfg)
		if err != nil {
			cs.Close()
			return nil, nil, err
		}
		return hashicorpSession{cs}, hashicorpSession{ss}, nil
	})
}

func libp2pLink(cfg *lyamux.Config) func(testing.TB, time.Duration) *link {
	return muxLink(func(c, s net.Conn) (muxSession, muxSession, error) {
		cs, err := lyamux.Client(c, cfg, nil)
		if err != nil {
			return nil, nil, err
		}
		ss, err := lyamux.Server(s, cfg, nil)
		if err != nil {
			cs.Close()
			return nil, nil, err
		}
		return libp2pSession{cs}, libp2pSession{ss}, nil
	})
}

func smuxLink(cfg *smux.Config) func(testing.TB, time.Duration) *link {
	return muxLink(func(c, s net.Conn) (muxSession, muxSession, error) {
		cs, err := smux.Client(c, cfg)
		if err != nil {
			return nil, nil, err
		}
		ss, err := smux.Server(s, cfg)
		if err != nil {
			cs.Close()
			return nil, nil, err
		}
		return smuxSession{cs}, smuxSession{ss}, nil
	})
}

// muxLink returns a link whose streams share one TLS 1.3 connection over
// loopback TCP (through a delaying relay if rtt > 0).
func muxLink(start func(c, s net.Conn) (muxSession, muxSession, error)) func(testing.TB, time.Duration) *link {
	return func(tb testing.TB, rtt time.Duration) *link {
		tb.Helper()
		cc, sc, stop := tlsPair(tb, rtt)
		cs, ss, err := start(cc, sc)
		if err != nil {
			stop()
			tb.Fatal(err)
		}
		return &link{
			open:   cs.open,
			accept: ss.accept,
			close: sync.OnceFunc(func() {
				cs.Close()
				ss.Close()
				stop()
			}),
		}
	}
}

// tlsPair returns both ends of a TLS 1.3 connection over loopback TCP
// (through a delaying relay if rtt > 0), handshakes done. stop closes both.
func tlsPair(tb testing.TB, rtt time.Duration) (client, server *tls.Conn, stop func()) {
	tb.Helper()
	srvConf, cliConf := tlsConfigs()
	ln := listen(tb)
	addr, stopRelay := ln.Addr().String(), func() {}
	if rtt > 0 {
		addr, stopRelay = relay(tb, addr, rtt)
	}
	type result struct {
		c   *tls.Conn
		err error
	}
	accepted := make(chan result, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			accepted <- result{nil, err}
			return
		}
		c := tls.Server(raw, srvConf)
		if err := handshake(c); err != nil {
			raw.Close()
			accepted <- result{nil, err}
			return
		}
		accepted <- result{c, nil}
	}()
	client, err := dialTLS(addr, cliConf)
	ln.Close() // also ends a pending Accept if the dial failed
	sr := <-accepted
	server = sr.c
	stop = func() {
		for _, c := range []*tls.Conn{client, server} {
			if c != nil {
				c.Close()
			}
		}
		stopRelay()
	}
	if err == nil {
		err = sr.err
	}
	if err != nil {
		stop()
		tb.Fatal(err)
	}
	return client, server, stop
}

// directLink returns a link whose every stream is a TLS 1.3 connection of
// its own over loopback TCP (through a delaying relay if rtt > 0).
func directLink(tb testing.TB, rtt time.Duration) *link {
	tb.Helper()
	srvConf, cliConf := tlsConfigs()
	ln := listen(tb)
	addr, stopRelay := ln.Addr().String(), func() {}
	if rtt > 0 {
		addr, stopRelay = relay(tb, addr, rtt)
	}
	conns := newConnSet()
	return &link{
		open: func() (stream, error) {
			c, err := dialTLS(addr, cliConf)
			if err != nil {
				return nil, err
			}
			return conns.add(c), nil
		},
		accept: func() (stream, error) {
			for {
				raw, err := ln.Accept()
				if err != nil {
					return nil, err
				}
				c := tls.Server(raw, srvConf)
				if err := handshake(c); err != nil {
					raw.Close() // a failed client: keep serving the others
					continue
				}
				return conns.add(c), nil
			}
		},
		close: sync.OnceFunc(func() {
			ln.Close()
			conns.closeAll()
			stopRelay()
		}),
	}
}

// connSet tracks open direct connections so that a link can close them all.
type connSet struct {
	mu sync.Mutex
	m  map[*tlsStream]struct{}
}

func newConnSet() *connSet { return &connSet{m: make(map[*tlsStream]struct{})} }

func (s *connSet) add(c *tls.Conn) *tlsStream {
	t := &tlsStream{Conn: c, set: s}
	s.mu.Lock()
	s.m[t] = struct{}{}
	s.mu.Unlock()
	return t
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	all := s.m
	s.m = make(map[*tlsStream]struct{})
	s.mu.Unlock()
	for t := range all {
		t.Conn.Close()
	}
}

type tlsStream struct {
	*tls.Conn
	set *connSet
}

func (t *tlsStream) Close() error {
	t.set.mu.Lock()
	delete(t.set.m, t)
	t.set.mu.Unlock()
	return t.Conn.Close()
}

func listen(tb testing.TB) net.Listener {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	return ln
}

func dialTLS(addr string, conf *tls.Config) (*tls.Conn, error) {
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, conf)
	if err := handshake(c); err != nil {
		raw.Close()
		return nil, err
	}
	return c, nil
}

func handshake(c *tls.Conn) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.HandshakeContext(ctx)
}

// tlsConfigs returns a server and a client TLS 1.3 configuration sharing a
// self-signed ECDSA P-256 certificate for 127.0.0.1.
var tlsConfigs = sync.OnceValues(func() (server, client *tls.Config) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "muxbench"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	server = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}},
	}
	client = &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots, ServerName: "127.0.0.1"}
	return server, client
})

// relay listens on loopback and forwards each connection to target, holding
// every chunk for rtt/2 in each direction: a path with that round-trip time
// and no bandwidth limit. stop closes everything and waits for its
// goroutines.
func relay(tb testing.TB, target string, rtt time.Duration) (addr string, stop func()) {
	tb.Helper()
	ln := listen(tb)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	track := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	wg.Go(func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			track(in)
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			track(out)
			wg.Go(func() { delayCopy(out, in, rtt/2) })
			wg.Go(func() { delayCopy(in, out, rtt/2) })
		}
	})
	return ln.Addr().String(), func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}
}

// delayCopy copies src to dst, writing each chunk delay after it was read.
func delayCopy(dst, src net.Conn, delay time.Duration) {
	type chunk struct {
		due  time.Time
		data []byte
	}
	q := make(chan chunk, 1<<14)
	go func() {
		defer close(q)
		for {
			buf := make([]byte, 64<<10)
			n, err := src.Read(buf)
			if n > 0 {
				q <- chunk{time.Now().Add(delay), buf[:n]}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range q {
		time.Sleep(time.Until(c.due))
		if _, err := dst.Write(c.data); err != nil {
			src.Close()
			for range q { // let the reader finish
			}
			return
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}

// firstError keeps the first non-nil error set.
type firstError struct {
	mu  sync.Mutex
	err error
}

func (f *firstError) set(err error) {
	f.mu.Lock()
	if f.err == nil {
		f.err = err
	}
	f.mu.Unlock()
}

func (f *firstError) get() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

func resetTimer(tb testing.TB) {
	if b, ok := tb.(*testing.B); ok {
		b.ResetTimer()
	}
}

func stopTimer(tb testing.TB) {
	if b, ok := tb.(*testing.B); ok {
		b.StopTimer()
	}
}

// waitGoroutines fails tb if the goroutine count does not fall back to base
// within a few seconds.
func waitGoroutines(tb testing.TB, base int) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			tb.Fatalf("%d goroutines left, want %d:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkIdleSessions opens 1000 idle sessions (both ends in this
// process, over TLS on loopback) and reports what the multiplexer adds per
// session end, after a GC: live heap plus goroutine stacks, and
// goroutines. The TLS connections are made and measured first, so their
// own cost is left out.
func BenchmarkIdleSessions(b *testing.B) {
	const n = 1000
	starts := []struct {
		name  string
		start func(c, s net.Conn) (muxSession, muxSession, error)
	}{
		{"libp2p-yamux", func(c, s net.Conn) (muxSession, muxSession, error) {
			cfg := libp2pConfig(0)
			cfg.ReadBufSize = 0 // as tlsmux configured it
			cs, err := lyamux.Client(c, cfg, nil)
			if err != nil {
				return nil, nil, err
			}
			ss, err := lyamux.Server(s, cfg, nil)
			if err != nil {
				cs.Close()
				return nil, nil, err
			}
			return libp2pSession{cs}, libp2pSession{ss}, nil
		}},
		{"mux", func(c, s net.Conn) (muxSession, muxSession, error) {
			cfg := mux.Config{KeepAlivePeriod: 5 * time.Second, MaxIdleTimeout: 15 * time.Second, WriteTimeout: 10 * time.Second}
			return diglettSession{mux.Client(c, cfg)}, diglettSession{mux.Server(s, cfg)}, nil
		}},
	}
	for _, st := range starts {
		b.Run(st.name, func(b *testing.B) {
			for b.Loop() {
				base := runtime.NumGoroutine()
				type pair struct {
					c, s   *tls.Conn
					stop   func()
					cs, ss muxSession
				}
				pairs := make([]pair, n)
				for i := range pairs {
					pairs[i].c, pairs[i].s, pairs[i].stop = tlsPair(b, 0)
				}
				m0, g0 := memNow()
				for i := range pairs {
					cs, ss, err := st.start(pairs[i].c, pairs[i].s)
					if err != nil {
						b.Fatal(err)
					}
					pairs[i].cs, pairs[i].ss = cs, ss
				}
				time.Sleep(500 * time.Millisecond) // let the first pings settle
				m1, g1 := memNow()
				b.ReportMetric(float64(m1-m0)/(2*n), "B/session")
				b.ReportMetric(float64(g1-g0)/(2*n), "goroutines/session")
				for _, p := range pairs {
					p.cs.Close()
					p.ss.Close()
					p.stop()
				}
				waitGoroutines(b, base)
			}
		})
	}
}

// memNow is live heap plus goroutine stacks after a GC, and the number of
// goroutines.
func memNow() (uint64, int) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc + m.StackInuse, runtime.NumGoroutine()
}
