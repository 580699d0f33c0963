package e2e

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/diglett/diglett"
)

// BenchmarkHTTP compares, in the same run, small HTTP requests sent
// directly to a backend with the same requests through the gateway's HTTP
// ingress (routed by Host) and through the tunnel's public TCP port, with
// the agent's session over each transport, over 64 keep-alive connections
// ("parallel") and one ("serial"). The ratio of ns/op to "direct" is the
// figure that counts on a shared machine:
//
//	go test -run '^$' -bench BenchmarkHTTP -count 5 . | benchstat -
func BenchmarkHTTP(b *testing.B) {
	body := bytes.Repeat([]byte("x"), 100)
	backend := startHTTPBackend(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(body)
	}))
	g := httpGateway(b, gatewayOptions{})
	paths := []struct {
		name, dial, host string
	}{
		{"direct", backend, backend},
	}
	for _, via := range []string{diglett.TransportTCP, diglett.TransportQUIC, diglett.TransportWebSocket} {
		name := "bench-" + via
		ln := startHTTPAgent(b, g, name, backend, func(c *diglett.Config) {
			c.Transport = via
			c.WebSocketAddr = g.HTTPSAddr
		})
		paths = append(paths,
			struct{ name, dial, host string }{"host-" + via, g.HTTPAddr, name + "." + testDomain},
			struct{ name, dial, host string }{"tcp-port-" + via, ln.Addr().String(), ln.Addr().String()})
	}
	for _, mode := range []string{"serial", "parallel"} {
		for _, p := range paths {
			b.Run(mode+"/"+p.name, func(b *testing.B) {
				tr := &http.Transport{
					DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
						var d net.Dialer
						return d.DialContext(ctx, network, p.dial)
					},
					MaxIdleConnsPerHost: 256,
				}
				defer tr.CloseIdleConnections()
				c := &http.Client{Transport: tr}
				url := "http://" + p.host + "/"
				do := func(b *testing.B) {
					resp, err := c.Get(url)
					if err != nil {
						b.Fatal(err)
					}
					n, _ := io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 || n != int64(len(body)) {
						b.Fatalf("status %d, %d bytes", resp.StatusCode, n)
					}
				}
				if mode == "serial" {
					for b.Loop() {
						do(b)
					}
					return
				}
				b.SetParallelism(32) // 64 connections on 2 cores
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						do(b)
					}
				})
			})
		}
	}
}
