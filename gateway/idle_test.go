package gateway

import (
	"bytes"
	"context"
	"crypto"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
	"go.uber.org/goleak"

	"github.com/diglett/diglett/internal/identity"
	"github.com/diglett/diglett/internal/testutil"
)

// The tests of idle.go: an idle agent session over TLS over TCP parks its
// multiplexer's receive loop, and a tunnel's public TCP port its accept
// loop; the server's poller wakes them. They count goroutines by the
// frames on their stacks. A frame is matched with its opening
// parenthesis: a goroutine's "created by" line names a function without
// one, so a goroutine that a loop started is not counted as the loop.

// testParkAfter is how long the sessions and ports of these tests are
// quiet before they park.
const testParkAfter = 50 * time.Millisecond

// idleServer is newServer with public ports on 127.0.0.1, and sessions
// and ports that park after testParkAfter.
func idleServer(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	return idleServerAfter(t, cfg, testParkAfter)
}

// idleServerAfter is idleServer with sessions and ports that park after
// the given silence.
func idleServerAfter(t *testing.T, cfg Config, after time.Duration) (*Server, string) {
	t.Helper()
	cfg.TLS = testutil.ServerTLS(t)
	cfg.Auth = allowAll
	cfg.PublicHost = "127.0.0.1"
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Set before Serve: sessions and ports read it as they start.
	srv.parkAfter = after
	return srv, serveLoopback(t, srv)
}

// idleAgent logs a real agent (diglett.Listen over TLS over TCP) in to
// srv at addr with tunnel name; it is closed at the end of the test.
func idleAgent(t *testing.T, srv *Server, addr, name string) net.Listener {
	t.Helper()
	cert := testutil.Cert(t)
	fp, err := identity.Fingerprint(cert.PrivateKey.(crypto.Signer).Public())
	if err != nil {
		t.Fatal(err)
	}
	g := &regGateway{Server: srv, Addr: addr, Fingerprint: fp}
	ln, _ := g.listen(t, name)
	t.Cleanup(func() { ln.Close() })
	return ln
}

// recvLoops counts the multiplexer receive loops of this process, on
// both sides: the agents of these tests run here too, and theirs never
// park.
func recvLoops() int { return testutil.GoroutinesIn("mux.(*Session).recvLoop(") }

// gatewayReads counts the goroutines reading an agent connection of the
// gateway: only the gateway's connections are firstByteConns.
func gatewayReads() int { return testutil.GoroutinesIn("gateway.(*firstByteConn).Read(") }

// acceptLoops counts the accept loops of public ports.
func acceptLoops() int { return testutil.GoroutinesIn("gateway.(*tunnel).acceptLoop(") }

// pollerLoops counts the goroutines of readiness pollers.
func pollerLoops() int { return testutil.GoroutinesIn("readiness.(*Poller).loop(") }

// gatewayGoroutines counts the goroutines running the gateway's own code,
// not this package's tests'.
func gatewayGoroutines() int {
	return testutil.GoroutinesIn("github.com/diglett/diglett/gateway.", "_test.go")
}

// waitQuiet waits until no receive loop runs in the process: one a test
// before this one left lingering would be counted as one of this test's
// agents'.
func waitQuiet(t *testing.T) {
	t.Helper()
	if err := testutil.Poll(5*time.Second, func() error {
		if n := recvLoops(); n != 0 {
			return fmt.Errorf("%d receive loops still run before the test starts", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// waitParked waits until every session of the gateway and every public
// port has parked: the only receive loops left are the agents' own, as
// many as agents, none reads a gateway connection, and no accept loop
// runs.
func waitParked(t *testing.T, agents int, when string) {
	t.Helper()
	if err := testutil.Poll(5*time.Second, func() error {
		if n := acceptLoops(); n != 0 {
			return fmt.Errorf("%s: %d accept loops run, want none", when, n)
		}
		if n := gatewayReads(); n != 0 {
			return fmt.Errorf("%s: %d goroutines read an agent connection of the gateway, want none", when, n)
		}
		if n := recvLoops(); n != agents {
			return fmt.Errorf("%s: %d receive loops run, want %d (the agents')", when, n, agents)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// sessionCount is how many agent sessions the server holds.
func sessionCount(srv *Server) int {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return len(srv.sessions)
}

// portOf is the public port of tunnel name.
func portOf(t *testing.T, srv *Server, name string) int {
	t.Helper()
	tun := srv.reg.route(name)
	if tun == nil || tun.ln == nil {
		t.Fatalf("no tunnel %s with a public port", name)
	}
	return tun.port
}

// echoThrough dials port as a visitor and checks that msg comes back
// whole, through the agent, from a backend that echoes.
func echoThrough(t *testing.T, port int, msg []byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 5*time.Second)
	if err != nil {
		t.Fatalf("visitor: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	wrote := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		wrote <- err
	}()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("visitor: read the echo: %v", err)
	}
	if err := <-wrote; err != nil {
		t.Fatalf("visitor: write: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("visitor: the echo of %d bytes differs from what was sent", len(msg))
	}
}

// TestIdleSessionParks: a real agent's session and its tunnel's port
// park; a visitor then wakes both and is relayed end to end to the
// agent's backend, and so again after they parked a second time.
func TestIdleSessionParks(t *testing.T) {
	waitQuiet(t)
	srv, addr := idleServer(t, Config{})
	ln := idleAgent(t, srv, addr, "park")
	// The backend: it echoes each connection the agent hands it.
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	port := portOf(t, srv, "park")

	waitParked(t, 1, "agent idle")
	echoThrough(t, port, []byte("hello after the first park"))

	waitParked(t, 1, "agent idle again")
	// Many frames this time, each way.
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<14)
	echoThrough(t, port, big)

	waitParked(t, 1, "agent idle a third time")
	echoThrough(t, port, []byte("and once more"))
	if n := members(srv, "park"); n != 1 {
		t.Fatalf("park has %d sessions after the visitors, want 1", n)
	}
}

// TestKeepalivesLeaveSessionParked: a session that receives nothing but
// keepalives stays parked between them. The gateway pings its agent (whose
// own keepalive period is the default 5 s) after 150 ms of silence, far
// more often than the session parks after (2 s without anything else):
// it parks all the same, and is found parked in most samples taken
// between the pings. A session that waited out the 2 s after each ping
// would hardly ever be parked.
func TestKeepalivesLeaveSessionParked(t *testing.T) {
	waitQuiet(t)
	cfg := Config{}
	cfg.Transport.KeepAlivePeriod = 100 * time.Millisecond
	cfg.Transport.MaxIdleTimeout = time.Second
	srv, addr := idleServerAfter(t, cfg, 2*time.Second)
	idleAgent(t, srv, addr, "pinged")
	waitParked(t, 1, "agent idle, pinged every 150 ms")
	parked := 0
	tick := time.NewTicker(150 * time.Millisecond)
	defer tick.Stop()
	for range 20 {
		<-tick.C
		if gatewayReads() == 0 && recvLoops() == 1 {
			parked++
		}
	}
	if parked < 15 {
		t.Fatalf("the session was parked in %d of 20 samples over 3 s of pings, want at least 15", parked)
	}
	if n := members(srv, "pinged"); n != 1 {
		t.Fatalf("pinged has %d sessions, want 1: the pings did not keep it", n)
	}
}

// cutter relays one TCP connection to a gateway, and cuts it when told:
// the gateway's end sees the connection closed, or reset, with nothing
// from the agent before.
type cutter struct {
	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	down net.Conn     // the agent's
	up   *net.TCPConn // the gateway's
}

func startCutter(t *testing.T, gateway string) *cutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &cutter{ln: ln}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		down, err := ln.Accept()
		if err != nil {
			return
		}
		up, err := net.DialTimeout("tcp", gateway, 5*time.Second)
		if err != nil {
			down.Close()
			return
		}
		c.mu.Lock()
		c.down, c.up = down, up.(*net.TCPConn)
		c.mu.Unlock()
		c.wg.Add(2)
		go func() {
			defer c.wg.Done()
			io.Copy(up, down)
		}()
		go func() {
			defer c.wg.Done()
			io.Copy(down, up)
		}()
	}()
	t.Cleanup(func() {
		c.cut(false)
		c.wg.Wait()
	})
	return c
}

// cut closes both connections; with reset, the gateway's with a reset.
func (c *cutter) cut(reset bool) {
	c.ln.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.up == nil {
		return
	}
	if reset {
		c.up.SetLinger(0)
	}
	c.up.Close()
	c.down.Close()
}

// TestIdleSessionEndsWhenAgentLeaves: a parked session whose agent goes
// away ends at once on the gateway, whether the agent closes its session
// or its connection is closed or reset under it: the poller wakes the
// loop, which sees it. The bound, 3s, is under the keepalive's first ping
// (5s), let alone its timeout (15s).
func TestIdleSessionEndsWhenAgentLeaves(t *testing.T) {
	for _, how := range []string{"agent closes", "connection closed", "connection reset"} {
		t.Run(how, func(t *testing.T) {
			waitQuiet(t)
			t.Cleanup(func() { goleak.VerifyNone(t) })
			srv, addr := idleServer(t, Config{})
			var cut *cutter
			if how != "agent closes" {
				cut = startCutter(t, addr)
				addr = cut.ln.Addr().String()
			}
			a := mustLogin(t, addr, "token", "leaving")
			waitParked(t, 1, "agent idle")
			if sessionCount(srv) != 1 || members(srv, "leaving") != 1 {
				t.Fatalf("before the agent leaves: %d sessions, %d members of the tunnel; want 1 and 1", sessionCount(srv), members(srv, "leaving"))
			}

			start := time.Now()
			switch how {
			case "agent closes":
				a.sess.Close()
			case "connection closed":
				cut.cut(false)
			case "connection reset":
				cut.cut(true)
			}
			if err := testutil.Poll(3*time.Second, func() error {
				if n, m := sessionCount(srv), members(srv, "leaving"); n != 0 || m != 0 {
					return fmt.Errorf("%v after the agent left: the gateway holds %d sessions and the tunnel %d members, want none", time.Since(start).Round(time.Millisecond), n, m)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if tun := srv.reg.route("leaving"); tun == nil {
				t.Fatal("the tunnel went at once, not leased")
			}
		})
	}
}

// TestCloseWithParkedSessionsAndPorts: Close of a server whose sessions
// and ports are all parked returns, and leaves no goroutine of the
// gateway: no receive or accept loop, no poller.
func TestCloseWithParkedSessionsAndPorts(t *testing.T) {
	waitQuiet(t)
	t.Cleanup(func() { goleak.VerifyNone(t) })
	srv, addr := idleServer(t, Config{})
	const agents = 5
	for i := range agents {
		mustLogin(t, addr, "token", fmt.Sprintf("closing%d", i))
	}
	waitParked(t, agents, "every agent idle")
	if n := pollerLoops(); n != 1 {
		t.Fatalf("%d poller loops run, want 1", n)
	}

	closeWithin(t, srv, 10*time.Second)
	if err := testutil.Poll(5*time.Second, func() error {
		for _, c := range []struct {
			what string
			n    int
		}{
			{"accept loops", acceptLoops()},
			{"receive loops", recvLoops()},
			{"poller loops", pollerLoops()},
			{"goroutines in the gateway's code", gatewayGoroutines()},
		} {
			if c.n != 0 {
				return fmt.Errorf("after Close: %d %s, want none", c.n, c.what)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestShutdownWithParkedPorts: Shutdown waits for the visitors of the
// ports it closes; a parked port's accept loop counts as one until the
// port closes, so Shutdown returns at once, well before its context ends.
func TestShutdownWithParkedPorts(t *testing.T) {
	waitQuiet(t)
	t.Cleanup(func() { goleak.VerifyNone(t) })
	srv, addr := idleServer(t, Config{})
	mustLogin(t, addr, "token", "shut1", "shut2")
	mustLogin(t, addr, "token", "shut3")
	waitParked(t, 2, "agents idle")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown after %v: %v", time.Since(start).Round(time.Millisecond), err)
	}
	if err := testutil.Poll(5*time.Second, func() error {
		if n, m := acceptLoops(), pollerLoops(); n != 0 || m != 0 {
			return fmt.Errorf("after Shutdown: %d accept loops, %d poller loops; want none", n, m)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestParkedPortClosedByLeaseEnd: the agent leaves while its port is
// parked, and the lease ends: the port closes with no accept loop woken
// for it, and the server's Close afterwards returns (the parked loop's
// count in the server's visitors was given back).
func TestParkedPortClosedByLeaseEnd(t *testing.T) {
	waitQuiet(t)
	t.Cleanup(func() { goleak.VerifyNone(t) })
	srv, addr := idleServer(t, Config{Lease: 100 * time.Millisecond})
	a := mustLogin(t, addr, "token", "leased")
	port := portOf(t, srv, "leased")
	waitParked(t, 1, "agent idle")

	a.sess.Close()
	if err := testutil.Poll(3*time.Second, func() error {
		if srv.reg.route("leased") != nil {
			return fmt.Errorf("the tunnel is still there after its lease")
		}
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
		if err == nil {
			c.Close()
			return fmt.Errorf("port %d still open after the lease", port)
		}
		if n := acceptLoops(); n != 0 {
			return fmt.Errorf("%d accept loops run after the lease, want none", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	closeWithin(t, srv, 10*time.Second)
	if err := testutil.Poll(5*time.Second, func() error {
		if n := gatewayGoroutines(); n != 0 {
			return fmt.Errorf("after Close: %d goroutines in the gateway's code, want none", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestProxyProtocolPortParks: with the PROXY protocol on, a tunnel's
// port parks as well, with no goroutine reading headers; a balancer's
// visitor wakes it and reaches the agent as the header's source, and the
// port parks again.
func TestProxyProtocolPortParks(t *testing.T) {
	waitQuiet(t)
	cfg := Config{ProxyProtocolFrom: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
	srv, addr := idleServer(t, cfg)
	ln := idleAgent(t, srv, addr, "balanced")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, c.RemoteAddr().String())
			c.Close()
		}
	}()
	port := portOf(t, srv, "balanced")
	readers := func() int { return testutil.GoroutinesIn("gateway.(*proxyListener).run(") }
	for i, v := range []byte{1, 2} {
		waitParked(t, 1, fmt.Sprintf("before balancer visitor %d", i+1))
		if n := readers(); n != 0 {
			t.Fatalf("%d goroutines accept for the PROXY protocol reader, want none", n)
		}
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		h := proxyproto.HeaderProxyFromAddrs(v,
			&net.TCPAddr{IP: net.ParseIP("203.0.113.9"), Port: 4242},
			&net.TCPAddr{IP: net.ParseIP("198.51.100.1"), Port: port})
		if _, err := h.WriteTo(c); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(got) != "203.0.113.9:4242" {
			t.Fatalf("v%d: the backend saw %q (%v), want the header's source", v, got, err)
		}
	}
	waitParked(t, 1, "after the balancer's visitors")
}
