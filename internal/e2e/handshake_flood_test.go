package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/gateway"
)

// floodHandshakeTimeout is the gateway's handshake timeout in the flood
// tests: much longer than the tests, so that only the defences under test
// (the first-byte timeout, the caps) free slots.
const floodHandshakeTimeout = 30 * time.Second

// dialFrom opens a TCP connection to addr from the loopback address local
// (all of 127/8 is local); it is closed when the test ends.
func dialFrom(t *testing.T, local net.IP, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: local}, Timeout: promptly}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial from %s: %v", local, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// busyTransports are the ways an agent reaches the gateway: TLS over TCP,
// QUIC, and WebSocket on the agent port and on the HTTPS port.
func busyTransports(g *testGateway) []struct {
	name string
	set  func(*diglett.Config)
} {
	return []struct {
		name string
		set  func(*diglett.Config)
	}{
		{"tcp", func(c *diglett.Config) { c.Transport = diglett.TransportTCP }},
		{"quic", func(c *diglett.Config) { c.Transport = diglett.TransportQUIC }},
		{"ws-agent-port", func(c *diglett.Config) { c.Transport, c.WebSocketAddr = diglett.TransportWebSocket, g.Addr }},
		{"ws-https-port", func(c *diglett.Config) { c.Transport, c.WebSocketAddr = diglett.TransportWebSocket, g.HTTPSAddr }},
	}
}

// One client holding 1,100 idle TCP connections to the agent port (more
// than the gateway's 1,024 handshake slots) keeps no other agent out, over
// any transport, and its connections are closed after the first-byte
// timeout, long before the handshake timeout.
func TestHandshakeFloodFromOneSource(t *testing.T) {
	checkLeaks(t)
	g := startGateway(t, gatewayOptions{HandshakeTimeout: floodHandshakeTimeout, Domain: "flood.test"})
	flooder := net.IPv4(127, 0, 0, 2)
	const n = 1100
	flood := make([]net.Conn, 0, n)
	for range n {
		flood = append(flood, dialFrom(t, flooder, g.Addr))
	}
	err := testutil.Poll(eventually, func() error {
		if st := g.HandshakeStats(); st.RefusedPerSource < n-gateway.DefaultMaxHandshakesPerSource {
			return fmt.Errorf("handshake stats %+v", st)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the flooding source was not held to its share: %v", err)
	}

	echo := startEcho(t)
	for _, tr := range busyTransports(g) {
		cfg := agentConfig(t, g, "flood-"+tr.name)
		tr.set(&cfg)
		ln := mustListen(t, cfg)
		forward(t, ln, echo)
		mustRoundTrip(t, ln.Addr().String(), "through the flood over "+tr.name)
	}

	for _, c := range flood {
		expectClosed(t, c, gateway.DefaultFirstByteTimeout+promptly)
	}
	if st := g.HandshakeStats(); st.FirstByteTimeouts < gateway.DefaultMaxHandshakesPerSource {
		t.Errorf("handshake stats %+v: want the idle connections closed for sending nothing", st)
	}
	waitFor(t, "gateway", g.Logs, `msg="agent connections refused: too many in their handshake" refused_per_source=`)
}

// When every handshake slot is held by a different source, a new agent is
// told the gateway is busy, over every transport; at start it retries
// instead of exiting, and connects once slots free.
func TestGatewayBusy(t *testing.T) {
	checkLeaks(t)
	g := startGateway(t, gatewayOptions{HandshakeTimeout: floodHandshakeTimeout, Domain: "busy.test"})
	holders := make([]net.Conn, 0, gateway.DefaultMaxHandshakes)
	for i := range gateway.DefaultMaxHandshakes {
		c := dialFrom(t, net.IPv4(127, 0, byte(1+i/256), byte(i%256)), g.Addr)
		// A TLS record begins: the connection is past its first byte and
		// holds its slot for the handshake timeout.
		if _, err := c.Write([]byte{0x16}); err != nil {
			t.Fatal(err)
		}
		holders = append(holders, c)
	}
	err := testutil.Poll(eventually, func() error {
		if st := g.HandshakeStats(); st.InProgress != gateway.DefaultMaxHandshakes {
			return fmt.Errorf("handshake stats %+v", st)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the holders did not fill the gateway: %v", err)
	}

	for _, tr := range busyTransports(g) {
		cfg := agentConfig(t, g, "busy-"+tr.name)
		tr.set(&cfg)
		log, sink := newLogger(t, "agent busy-"+tr.name)
		cfg.Logger = log
		ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
		ln, err := diglett.Listen(ctx, cfg)
		cancel()
		if err == nil {
			ln.Close()
			t.Fatalf("%s: agent connected to a full gateway", tr.name)
		}
		if !errors.Is(err, diglett.ErrGatewayBusy) || diglett.IsFatal(err) {
			t.Fatalf("%s: Listen = %v, want ErrGatewayBusy", tr.name, err)
		}
		waitFor(t, "agent", sink, "gateway busy, retrying")
	}

	// An agent started while the gateway is full connects once the
	// holders go.
	cfg := agentConfig(t, g, "patient")
	log, sink := newLogger(t, "agent patient")
	cfg.Logger = log
	type result struct {
		ln  *diglett.Listener
		err error
	}
	done := make(chan result, 1)
	go func() {
		ln, err := listen(t, cfg)
		done <- result{ln, err}
	}()
	waitFor(t, "agent", sink, "gateway busy, retrying")
	for _, c := range holders {
		c.Close()
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(eventually):
		t.Fatal("the agent did not connect once the slots were free")
	}
	if r.err != nil {
		t.Fatalf("listen once slots are free: %v", r.err)
	}
	forward(t, r.ln, startEcho(t))
	mustRoundTrip(t, r.ln.Addr().String(), "after the rush")
	waitFor(t, "gateway", g.Logs, "refused_gateway_full=")
}
