package quictransport

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"runtime/pprof"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	tunnelrelay "github.com/diglett/diglett/internal/relay"
	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/tlsmux"
)

// The bulk benchmarks isolate the transport leg of a tunnel: one stream
// over real sockets on loopback, the server session writing (the gateway
// sends a download to the agent) and the client session reading, with no
// visitor, backend or relay around them (BenchmarkRelay adds the relays).
// Run with:
//
//	go test -run '^$' -bench 'BenchmarkBulk$|BenchmarkRelay' -benchtime 1s -count 5 ./internal/transport/quictransport
//
// and compare quic against tcp in the same run; on a shared machine, run
// the variants in alternation (go test -c, then the binary in a loop) and
// take medians of the ratios. Each op moves
// bulkOp bytes; pkts/MiB and acks/MiB are the QUIC packets the sender and
// the receiver sent per MiB moved, lost/MiB the packets the sender
// declared lost, B/pkt the sender's mean packet size;
// cpu-us/MiB is the CPU time of the whole process (both sides) per MiB,
// the figure that decides throughput when the CPU is shared with the
// programs at both ends, and B/read the mean bytes a Read returned.

const (
	bulkOp    = 1 << 20  // bytes moved per op
	relayIO   = 32 << 10 // internal/relay's read buffer in bulk: the size of its writes
	benchWait = 10 * time.Second
)

// BenchmarkBulk compares the transports, one stream each, with relay-sized
// reads and writes: tcp is tlsmux (TLS 1.3 and the multiplexer) with its
// real config; tls a bare TLS 1.3 connection, the bound of tcp; quic this
// package's Listen and Dial with the real config; quic-defaults quic-go
// with its default Config, to see what our configuration costs or gains.
func BenchmarkBulk(b *testing.B) {
	b.Run("tcp", func(b *testing.B) {
		w, r := tlsmuxPair(b)
		benchCopy(b, w, r, relayIO, relayIO, nil)
	})
	b.Run("tls", func(b *testing.B) {
		w, r := tlsPair(b)
		benchCopy(b, w, r, relayIO, relayIO, nil)
	})
	b.Run("quic", func(b *testing.B) {
		c, s := benchPair(b, transport.Config{})
		benchQUIC(b, c, s, relayIO, relayIO)
	})
	b.Run("quic-defaults", func(b *testing.B) {
		c, s := rawPair(b, &quic.Config{})
		benchQUIC(b, c, s, relayIO, relayIO)
	})
}

// BenchmarkRelay is BenchmarkBulk in the tunnel's shape: a visitor
// writes to a TCP connection that the gateway's relay copies into the
// stream, and the agent's relay copies the stream into a TCP connection to
// the backend, which reads. The relays are internal/relay's, with their
// own buffers.
func BenchmarkRelay(b *testing.B) {
	b.Run("tcp", func(b *testing.B) {
		w, r := tlsmuxPair(b)
		benchRelay(b, w, r, nil)
	})
	b.Run("quic", func(b *testing.B) {
		c, s := benchPair(b, transport.Config{})
		w, r := openAccept(b, s, c)
		benchRelay(b, w, r, quicReport(b, c, s))
	})
}

// benchRelay moves data from a visitor to a backend through w, the
// gateway's end of a stream, and r, the agent's end, each relayed to and
// from loopback TCP as the tunnel does.
func benchRelay(b *testing.B, w, r net.Conn, report func(n int)) {
	visitorGW, visitor := tcpPair(b)
	backend, agentBE := tcpPair(b)
	var wg sync.WaitGroup
	wg.Add(2)
	go pprof.Do(context.Background(), serverSide, func(context.Context) {
		defer wg.Done()
		tunnelrelay.Pipe(visitorGW, w)
	})
	go pprof.Do(context.Background(), clientSide, func(context.Context) {
		defer wg.Done()
		tunnelrelay.Pipe(r, agentBE)
	})
	b.Cleanup(func() {
		// The relays end once both sides have closed: the visitor
		// and the backend here.
		visitor.Close()
		backend.Close()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(benchWait):
			b.Error("relays did not end")
			w.Close()
			r.Close()
		}
	})
	benchCopy(b, visitor, backend, relayIO, relayIO, report)
}

// BenchmarkBulkQUIC varies one thing at a time around the real
// configuration: quic-go knobs, windows, and the sizes of
// the writes into and the reads from a stream.
func BenchmarkBulkQUIC(b *testing.B) {
	knobs := []struct {
		name string
		set  func(*quic.Config)
	}{
		{"base", func(*quic.Config) {}},
		{"initial-packet=1452", func(c *quic.Config) { c.InitialPacketSize = 1452 }},
		{"initial-packet=1452/no-pmtud", func(c *quic.Config) {
			c.InitialPacketSize = 1452
			c.DisablePathMTUDiscovery = true
		}},
		{"stream-window=16MiB-from-start", func(c *quic.Config) { c.InitialStreamReceiveWindow = c.MaxStreamReceiveWindow }},
		{"stream-window=6MiB", func(c *quic.Config) {
			c.InitialStreamReceiveWindow = 512 << 10
			c.MaxStreamReceiveWindow = 6 << 20
		}},
	}
	for _, k := range knobs {
		b.Run(k.name, func(b *testing.B) {
			qc := quicConfig(transport.Config{})
			k.set(qc)
			c, s := rawPair(b, qc)
			benchQUIC(b, c, s, relayIO, relayIO)
		})
	}
	for _, size := range []int{4 << 10, 32 << 10, 128 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("write=%dKiB", size>>10), func(b *testing.B) {
			c, s := benchPair(b, transport.Config{})
			benchQUIC(b, c, s, size, relayIO)
		})
	}
	for _, size := range []int{4 << 10, 32 << 10, 128 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("read=%dKiB", size>>10), func(b *testing.B) {
			c, s := benchPair(b, transport.Config{})
			benchQUIC(b, c, s, relayIO, size)
		})
	}
}

// benchPair connects a client and a server session of this package over
// loopback UDP with cfg, as the gateway and the agent do.
func benchPair(b *testing.B, cfg transport.Config) (client, server *Session) {
	b.Helper()
	pconn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var ln *Listener
	pprof.Do(context.Background(), serverSide, func(context.Context) {
		ln, err = Listen(pconn, benchServerTLS(b), cfg, ListenOptions{})
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), benchWait)
	defer cancel()
	ch := make(chan *Session, 1)
	go func() {
		s, err := ln.Accept(ctx)
		if err != nil {
			b.Error(err)
		}
		ch <- s
	}()
	var c *Session
	pprof.Do(ctx, clientSide, func(ctx context.Context) {
		c, err = Dial(ctx, ln.Addr().String(), clientTLS(), cfg)
	})
	if err != nil {
		b.Fatal(err)
	}
	s := <-ch
	if s == nil {
		c.Close()
		b.FailNow()
	}
	b.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// rawPair is benchPair with qc given to quic-go as is on both sides. (No
// variant sets the sockets' buffers: quic-go raises any size below 7 MiB
// to 7 MiB itself, forcing it past net.core.rmem_max when it may.)
func rawPair(b *testing.B, qc *quic.Config) (client, server *Session) {
	b.Helper()
	udp := func() *net.UDPConn {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	quietBufferWarning()
	spc, cpc := udp(), udp()
	str, ctr := &quic.Transport{Conn: spc}, &quic.Transport{Conn: cpc}
	b.Cleanup(func() { str.Close(); spc.Close(); ctr.Close(); cpc.Close() })
	var (
		ln  *quic.Listener
		err error
	)
	pprof.Do(context.Background(), serverSide, func(context.Context) {
		ln, err = str.Listen(benchServerTLS(b), qc)
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), benchWait)
	defer cancel()
	ch := make(chan *quic.Conn, 1)
	go func() {
		c, err := ln.Accept(ctx)
		if err != nil {
			b.Error(err)
		}
		ch <- c
	}()
	var cc *quic.Conn
	pprof.Do(ctx, clientSide, func(ctx context.Context) {
		cc, err = ctr.Dial(ctx, spc.LocalAddr(), clientTLS(), qc)
	})
	if err != nil {
		b.Fatal(err)
	}
	sc := <-ch
	if sc == nil {
		b.FailNow()
	}
	client, server = newSession(cc, func() {}), newSession(sc, func() {})
	b.Cleanup(func() { client.Close(); server.Close(); ln.Close() })
	return client, server
}

// benchServerTLS is the server's TLS configuration with the diglett ALPN.
func benchServerTLS(b *testing.B) *tls.Config {
	tc := testutil.ServerTLS(b)
	tc.NextProtos = []string{alpn}
	return tc
}

// tlsmuxPair returns a stream opened by a tlsmux server session and the
// same stream accepted by its client, over loopback TCP.
func tlsmuxPair(b *testing.B) (w, r transport.Stream) {
	b.Helper()
	sc, cc := tcpPair(b)
	ctx, cancel := context.WithTimeout(context.Background(), benchWait)
	defer cancel()
	type res struct {
		s   *tlsmux.Session
		err error
	}
	ch := make(chan res, 1)
	stc := benchServerTLS(b)
	go pprof.Do(ctx, serverSide, func(ctx context.Context) {
		s, err := tlsmux.Server(ctx, sc, stc, transport.Config{})
		ch <- res{s, err}
	})
	var (
		client *tlsmux.Session
		err    error
	)
	pprof.Do(ctx, clientSide, func(ctx context.Context) {
		client, err = tlsmux.Client(ctx, cc, clientTLS(), transport.Config{})
	})
	if err != nil {
		b.Fatal(err)
	}
	sr := <-ch
	if sr.err != nil {
		client.Close()
		b.Fatal(sr.err)
	}
	b.Cleanup(func() { client.Close(); sr.s.Close() })
	return openAccept(b, sr.s, client)
}

// tlsPair returns the two ends of a bare TLS 1.3 connection over loopback
// TCP, the server's end first.
func tlsPair(b *testing.B) (w, r net.Conn) {
	b.Helper()
	sc, cc := tcpPair(b)
	s, c := tls.Server(sc, benchServerTLS(b)), tls.Client(cc, clientTLS())
	errc := make(chan error, 1)
	go func() { errc <- s.Handshake() }()
	if err := c.Handshake(); err != nil {
		b.Fatal(err)
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close(); c.Close() })
	return s, c
}

// tcpPair returns the two ends of a loopback TCP connection, the
// accepted one first.
func tcpPair(b *testing.B) (server, client net.Conn) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			b.Error(err)
		}
		ch <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	server = <-ch
	if server == nil {
		client.Close()
		b.FailNow()
	}
	return server, client
}

// openAccept opens a stream on opener and returns it with the same stream
// accepted on the acceptor (which sees it once something was written).
func openAccept(b *testing.B, opener, acceptor transport.Session) (w, r transport.Stream) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), benchWait)
	defer cancel()
	w, err := opener.OpenStream(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := w.Write([]byte{0}); err != nil {
		b.Fatal(err)
	}
	r, err = acceptor.AcceptStream(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.ReadFull(r, make([]byte, 1)); err != nil {
		b.Fatal(err)
	}
	return w, r
}

// benchQUIC moves data over one stream from server to client and reports
// the packets each side sent per MiB.
func benchQUIC(b *testing.B, client, server *Session, writeSize, readSize int) {
	w, r := openAccept(b, server, client)
	benchCopy(b, w, r, writeSize, readSize, quicReport(b, client, server))
}

// quicReport takes the sessions' packet counts now and returns the
// function that reports, per MiB moved, the packets each side sent since.
func quicReport(b *testing.B, client, server *Session) func(n int) {
	before := [2]quic.ConnectionStats{server.conn.ConnectionStats(), client.conn.ConnectionStats()}
	return func(n int) {
		after := [2]quic.ConnectionStats{server.conn.ConnectionStats(), client.conn.ConnectionStats()}
		sent := after[0].PacketsSent - before[0].PacketsSent
		acks := after[1].PacketsSent - before[1].PacketsSent
		b.ReportMetric(float64(sent)/float64(n), "pkts/MiB")
		b.ReportMetric(float64(acks)/float64(n), "acks/MiB")
		b.ReportMetric(float64(after[0].PacketsLost-before[0].PacketsLost)/float64(n), "lost/MiB")
		if sent > 0 {
			b.ReportMetric(float64(after[0].BytesSent-before[0].BytesSent)/float64(sent), "B/pkt")
		}
	}
}

// Profile labels telling the sending side (the server session, its
// socket and the writer) from the receiving one (the client session, its
// socket and the reader): quic-go's goroutines inherit them from the calls
// that start them. See the pprof -tagfocus flag.
var (
	serverSide = pprof.Labels("side", "sender")
	clientSide = pprof.Labels("side", "receiver")
)

// benchCopy writes b.N * bulkOp bytes to w in writeSize writes while
// reading them from r with a readSize buffer; report, if set, runs after
// the timer stopped with the number of MiB moved.
func benchCopy(b *testing.B, w io.Writer, r io.Reader, writeSize, readSize int, report func(n int)) {
	total := int64(b.N) * bulkOp
	chunk := make([]byte, writeSize)
	buf := make([]byte, readSize)
	b.SetBytes(bulkOp)
	cpu0 := cpuTime()
	b.ResetTimer()
	errc := make(chan error, 1)
	go pprof.Do(context.Background(), serverSide, func(context.Context) {
		for left := total; left > 0; {
			n := int(min(left, int64(len(chunk))))
			if _, err := w.Write(chunk[:n]); err != nil {
				errc <- err
				return
			}
			left -= int64(n)
		}
		errc <- nil
	})
	var (
		got   int64
		reads int
		rerr  error
	)
	pprof.Do(context.Background(), clientSide, func(context.Context) {
		for got < total && rerr == nil {
			var n int
			n, rerr = r.Read(buf[:min(int64(len(buf)), total-got)])
			got += int64(n)
			reads++
		}
	})
	if rerr != nil {
		b.Fatalf("read after %d of %d bytes: %v", got, total, rerr)
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-us/MiB")
	b.ReportMetric(float64(got)/float64(reads), "B/read")
	if report != nil {
		report(b.N)
	}
}
