package e2e

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diglett/diglett"
)

// BenchmarkUDP measures UDP round trips (a 512-byte datagram to an echo
// backend and its reply), directly and through a UDP tunnel's public port
// over each transport, with the gateway and the agent in this process:
// "rtt" is one visitor waiting for each reply (ns/op is the round trip);
// "16visitors" is 16 visitors at once, each with its own socket and so
// its own flow (ns/op is the time per round trip of all of them
// together). Compare each with "direct" of the same run:
//
//	go test -run '^$' -bench BenchmarkUDP -count 5 ./internal/e2e/
//
// A reply that does not come within a second is counted in "lost/op"
// and the datagram sent again.
func BenchmarkUDP(b *testing.B) {
	backend := udpEchoBackend(b)
	g := startGateway(b, gatewayOptions{})
	paths := [][2]string{{"direct", backend}}
	for _, via := range []string{diglett.TransportTCP, diglett.TransportQUIC, diglett.TransportWebSocket} {
		cfg := agentConfig(b, g, "udp-"+via)
		cfg.Fingerprint = g.Fingerprint
		cfg.Transport = via
		cfg.UDP = true
		ln := mustListen(b, cfg)
		forward(b, ln, backend)
		paths = append(paths, [2]string{via, ln.Addr().String()})
	}
	for _, p := range paths {
		// The visitors' sockets live as long as the benchmark, so that
		// each of its rounds uses the same flows: new ones every round
		// would meet the gateway's cap of flows per source address.
		c := dialUDP(b, p[1])
		visitors := make(chan *net.UDPConn, 16)
		for range cap(visitors) {
			visitors <- dialUDP(b, p[1])
		}
		b.Run(p[0]+"/rtt", func(b *testing.B) {
			var lost atomic.Int64
			buf := make([]byte, 2048)
			var seq uint64
			for b.Loop() {
				seq++
				udpRoundTrip(b, c, seq, buf, &lost)
			}
			b.ReportMetric(float64(lost.Load())/float64(b.N), "lost/op")
		})
		b.Run(p[0]+"/16visitors", func(b *testing.B) {
			var lost atomic.Int64
			b.SetParallelism(8) // 16 goroutines on 2 cores
			b.RunParallel(func(pb *testing.PB) {
				c := <-visitors
				defer func() { visitors <- c }()
				buf := make([]byte, 2048)
				var seq uint64
				for pb.Next() {
					seq++
					udpRoundTrip(b, c, seq, buf, &lost)
				}
			})
			b.ReportMetric(float64(lost.Load())/float64(b.N), "lost/op")
		})
	}
}

// udpRoundTrip sends datagram seq on c and waits for its echo, sending it
// again after a second without one (at most 10 times).
func udpRoundTrip(b *testing.B, c *net.UDPConn, seq uint64, buf []byte, lost *atomic.Int64) {
	out := make([]byte, 512)
	binary.BigEndian.PutUint64(out, seq)
	for try := 0; try < 10; try++ {
		if _, err := c.Write(out); err != nil {
			b.Error(err)
			return
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		for {
			n, err := c.Read(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				lost.Add(1)
				break
			}
			if err != nil {
				b.Error(err)
				return
			}
			if n == len(out) && binary.BigEndian.Uint64(buf) == seq {
				return
			}
			// A late echo of an earlier datagram: wait on.
		}
	}
	b.Errorf("datagram %d: no echo after 10 tries", seq)
}

func dialUDP(b *testing.B, addr string) *net.UDPConn {
	c, err := net.Dial("udp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c.(*net.UDPConn)
}

// udpEchoBackend answers every datagram with itself until the benchmark
// ends.
func udpEchoBackend(b *testing.B) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return pc.LocalAddr().String()
}
