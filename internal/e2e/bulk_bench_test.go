package e2e

import (
	"io"
	"net"
	"testing"

	"github.com/diglett/diglett"
)

// BenchmarkBulk sends 64 MiB per operation from a visitor to a backend
// that discards it, directly and through the tunnel's public TCP port over
// each transport; the MB/s of each against "direct" is the figure:
//
//	go test -run '^$' -bench BenchmarkBulk -count 5 .
func BenchmarkBulk(b *testing.B) {
	const size = 64 << 20
	backend := startBackend(b, func(c *net.TCPConn) {
		io.Copy(io.Discard, c)
		c.Close()
	})
	g := startGateway(b, gatewayOptions{})
	paths := [][2]string{{"direct", backend}}
	for _, via := range []string{diglett.TransportTCP, diglett.TransportQUIC, diglett.TransportWebSocket} {
		cfg := agentConfig(b, g, "bulk-"+via)
		cfg.Fingerprint = g.Fingerprint
		cfg.Transport = via
		ln := mustListen(b, cfg)
		forward(b, ln, backend)
		paths = append(paths, [2]string{via, ln.Addr().String()})
	}
	buf := make([]byte, 32<<10)
	for _, p := range paths {
		b.Run(p[0], func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				c, err := net.Dial("tcp", p[1])
				if err != nil {
					b.Fatal(err)
				}
				for sent := 0; sent < size; sent += len(buf) {
					if _, err := c.Write(buf); err != nil {
						b.Fatal(err)
					}
				}
				c.(*net.TCPConn).CloseWrite()
				// The backend closes once it has read everything.
				if _, err := c.Read(buf[:1]); err != io.EOF {
					b.Fatalf("after the upload: %v, want EOF", err)
				}
				c.Close()
			}
		})
	}
}
