package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

// openFDs counts this process's open file descriptors; ok is false where
// /proc/self/fd is not available.
func openFDs(t *testing.T) (n int, ok bool) {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, false
	}
	return len(ents), true
}

// socketsOnPort counts the TCP sockets this process holds open whose
// local port is port, listeners excepted: the connections a gateway holds
// on a public port. ok is false where /proc is not available.
func socketsOnPort(t *testing.T, port int) (n int, ok bool) {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, false
	}
	inodes := make(map[string]bool)
	for _, e := range ents {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // closed meanwhile
		}
		if ino, found := strings.CutPrefix(target, "socket:["); found {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	const listen = "0A" // TCP_LISTEN in /proc/net/tcp
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(file)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] == listen || !inodes[fields[9]] {
				continue
			}
			_, hexPort, _ := strings.Cut(fields[1], ":")
			if p, err := strconv.ParseUint(hexPort, 16, 16); err == nil && int(p) == port {
				n++
			}
		}
		f.Close()
	}
	return n, true
}

// silentBackend starts a backend that reads what it is sent until EOF and
// then neither answers nor closes, until the test ends. eofs counts the
// connections that reached EOF. The agent's relays for it must be set up
// before it, so that it lets go of its connections first at the end.
func silentBackend(t *testing.T, ln net.Listener) (eofs *atomic.Int64) {
	eofs = new(atomic.Int64)
	release := make(chan struct{})
	serveBackend(t, ln, func(c *net.TCPConn) {
		if _, err := io.Copy(io.Discard, c); err == nil {
			eofs.Add(1)
		}
		<-release
	})
	t.Cleanup(func() { close(release) }) // before serveBackend's cleanup
	return eofs
}

// tunnelPort is the public port of the first tunnel of ln.
func tunnelPort(t *testing.T, ln interface{ Addr() net.Addr }) (addr string, port int) {
	t.Helper()
	addr = ln.Addr().String()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	port, _ = strconv.Atoi(p)
	return addr, port
}

// TestHalfClosedVisitorsReaped: visitors that half-close on a tunnel whose
// backend never answers nor closes, and then go away, are not held by the
// gateway: within the half-close timeout its relays end, their goroutines
// return and their sockets are closed. Another tunnel serves throughout.
func TestHalfClosedVisitorsReaped(t *testing.T) {
	checkLeaks(t)
	const (
		visitors  = 250
		halfClose = time.Second
	)
	g := startGateway(t, gatewayOptions{HalfCloseTimeout: halfClose})

	other := mustListen(t, agentConfig(t, g, "other"))
	forward(t, other, startEcho(t))
	otherAddr := other.Addr().String()
	mustRoundTrip(t, otherAddr, "before")
	const workers = 2
	// The other tunnel's calls read their echo before closing: a call that
	// half-closed first would itself be bound by the short half-close
	// timeout, which a loaded machine can outlast.
	load := startLoad(t, workers, func(w, i int) error {
		return echoExchange(otherAddr, fmt.Sprintf("visitor %d call %d", w, i), false)
	})
	load.mark()
	t.Cleanup(func() { // when the test fails before load.finish
		select {
		case <-load.stop:
		default:
			close(load.stop)
		}
		load.wg.Wait()
	})

	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	silent := mustListen(t, agentConfig(t, g, "silent"))
	forward(t, silent, bl.Addr().String())
	eofs := silentBackend(t, bl)
	addr, port := tunnelPort(t, silent)

	fdsBefore, haveFDs := openFDs(t)
	conns := make([]*net.TCPConn, 0, visitors)
	for i := range visitors {
		c := dialVisitor(t, addr)
		if _, err := fmt.Fprintf(c, "visitor %d\n", i); err != nil {
			t.Fatal(err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// Every visitor's EOF went through: each relay is half-closed.
	if err := testutil.Poll(eventually, func() error {
		if n := eofs.Load(); n < visitors {
			return fmt.Errorf("the backend saw %d of %d EOFs", n, visitors)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	held := testutil.GoroutinesIn("gateway.(*tunnel).serveVisitor")
	sockets, _ := socketsOnPort(t, port)
	t.Logf("half-closed: gateway holds %d visitor goroutines and %d sockets on port %d", held, sockets, port)
	// The visitors exit.
	gone := time.Now()
	for _, c := range conns {
		c.Close()
	}

	err = testutil.Poll(halfClose+promptly, func() error {
		// The other tunnel's visitors in flight, at most one per worker,
		// are counted too.
		if n := testutil.GoroutinesIn("gateway.(*tunnel).serveVisitor"); n > workers {
			return fmt.Errorf("%d visitor goroutines still running", n)
		}
		if n, ok := socketsOnPort(t, port); ok && n != 0 {
			return fmt.Errorf("%d sockets still open on the public port", n)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v after %v (half-close timeout %v)", err, time.Since(gone).Round(time.Millisecond), halfClose)
	}
	t.Logf("gateway released them %v after the visitors left", time.Since(gone).Round(time.Millisecond))
	load.finish(t, "the half-closed visitors")
	mustRoundTrip(t, otherAddr, "after")
	if haveFDs {
		// The backend still holds its connections (it never closes), and
		// so do the agent's relays to it (the agent library's forwarding
		// has no half-close bound): the process holds those two per visitor
		// more than before, give or take the other tunnel's load.
		const slack = 20
		if n, _ := openFDs(t); n > fdsBefore+2*visitors+slack {
			t.Errorf("%d descriptors open, %d before the visitors came", n, fdsBefore)
		}
	}
}

// TestResetVisitorsReaped: visitors that send a line and reset their
// connection at once, on a tunnel whose backend reads and then neither
// answers nor closes, are not held by the gateway. The reset often arrives
// with the data, before the relay's first read, where no readiness
// announces it again once the data is read; the relay's read check finds
// it within its 10 s, its relays end and the agent drops the backend's
// connections. Another tunnel serves throughout.
func TestResetVisitorsReaped(t *testing.T) {
	checkLeaks(t)
	const (
		visitors   = 100
		checkEvery = 10 * time.Second // internal/relay's read check
	)
	g := startGateway(t, gatewayOptions{})
	other := mustListen(t, agentConfig(t, g, "other"))
	forward(t, other, startEcho(t))
	otherAddr := other.Addr().String()

	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var reached, ended atomic.Int64
	release := make(chan struct{})
	serveBackend(t, bl, func(c *net.TCPConn) {
		reached.Add(1)
		io.Copy(io.Discard, c) // until the agent drops the connection
		ended.Add(1)
		<-release
	})
	t.Cleanup(func() { close(release) })
	reset := mustListen(t, agentConfig(t, g, "reset"))
	forward(t, reset, bl.Addr().String())
	addr, port := tunnelPort(t, reset)

	start := time.Now()
	for i := range visitors {
		c := dialVisitor(t, addr)
		if _, err := fmt.Fprintf(c, "visitor %d\n", i); err != nil {
			t.Fatal(err)
		}
		c.SetLinger(0)
		c.Close()
	}
	err = testutil.Poll(checkEvery+eventually, func() error {
		if n := testutil.GoroutinesIn("gateway.(*tunnel).serveVisitor"); n > 0 {
			return fmt.Errorf("%d visitor goroutines still running", n)
		}
		if n, ok := socketsOnPort(t, port); ok && n != 0 {
			return fmt.Errorf("%d sockets still open on the public port", n)
		}
		if r, e := reached.Load(), ended.Load(); e != r {
			return fmt.Errorf("the backend still holds %d of the %d connections it got", r-e, r)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v after %v", err, time.Since(start).Round(time.Millisecond))
	}
	t.Logf("%d visitors reset; the gateway released them and the backend's %d connections ended %v after the first came",
		visitors, reached.Load(), time.Since(start).Round(time.Millisecond))
	mustRoundTrip(t, otherAddr, "after")
}

// TestVisitorCaps: beyond MaxVisitorsPerTunnel a tunnel's TCP visitors are
// refused at once and its HTTP requests get 503 with Retry-After; beyond
// MaxVisitors every new visitor connection, TCP or HTTP, is refused at
// accept. Refusals are logged; slots come back when visitors leave.
func TestVisitorCaps(t *testing.T) {
	checkLeaks(t)
	const perTunnel, global = 5, 8
	g := startGateway(t, gatewayOptions{Domain: testDomain, MaxVisitors: global, MaxVisitorsPerTunnel: perTunnel})

	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	full := mustListen(t, agentConfig(t, g, "full"))
	forward(t, full, bl.Addr().String())
	eofs := silentBackend(t, bl)
	fullAddr, _ := tunnelPort(t, full)

	echo := mustListen(t, agentConfig(t, g, "echo"))
	forward(t, echo, startEcho(t))
	echoAddr := echo.Addr().String()

	// The tunnel's cap: perTunnel visitors in (the backend sees them), the
	// next one refused.
	for i := range perTunnel {
		c := dialVisitor(t, fullAddr)
		io.WriteString(c, "x")
		c.CloseWrite()
		if err := testutil.Poll(eventually, func() error {
			if eofs.Load() <= int64(i) {
				return fmt.Errorf("visitor %d not through", i)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	expectTurnedAway(t, fullAddr)
	waitFor(t, "gateway", g.Logs, "visitor refused: too many visitors")
	if !strings.Contains(g.Logs.String(), "limit=tunnel") {
		t.Errorf("the refusal log does not name the tunnel's cap:\n%s", g.Logs)
	}
	hc := g.httpClient(t)
	resp, err := hc.Get("http://full." + testDomain + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "too many visitors") {
		t.Errorf("HTTP request beyond the tunnel's cap: %s, Retry-After %q, %q; want 503 for too many visitors, with Retry-After", resp.Status, resp.Header.Get("Retry-After"), body)
	}
	hc.CloseIdleConnections()

	// The gateway's cap: global - perTunnel visitors of the other tunnel
	// fill it; then neither a TCP visitor nor an HTTP connection gets in.
	// The HTTP connections above hold gateway slots until the gateway
	// has seen them close: a visitor refused meanwhile tries again.
	var open []net.Conn
	for i := range global - perTunnel {
		var c net.Conn
		err := testutil.Poll(eventually, func() error {
			c = dialVisitor(t, echoAddr)
			c.SetDeadline(time.Now().Add(eventually))
			msg := fmt.Sprintf("held %d\n", i)
			io.WriteString(c, msg)
			if _, err := io.ReadFull(c, make([]byte, len(msg))); err != nil {
				c.Close()
				return err
			}
			return nil
		})
		if err != nil {
			t.Fatalf("visitor %d below the gateway's cap: %v", i, err)
		}
		open = append(open, c)
	}
	expectTurnedAway(t, echoAddr)
	hc2 := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: hc.Transport.(*http.Transport).DialContext}, Timeout: eventually}
	if resp, err := hc2.Get("http://echo." + testDomain + "/"); err == nil {
		resp.Body.Close()
		t.Errorf("HTTP connection beyond the gateway's cap got %s; want it closed at accept", resp.Status)
	}

	// A visitor leaves: its slot comes back.
	open[0].Close()
	if err := testutil.Poll(eventually, func() error { return roundTrip(echoAddr, "room again") }); err != nil {
		t.Fatalf("slot not given back after a visitor left: %v", err)
	}
	for _, c := range open[1:] {
		c.Close()
	}
}
