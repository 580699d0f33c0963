package e2e

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/internal/transport/wstransport/proxytest"
)

// TestTransportsEndToEnd runs a TCP tunnel and an HTTP tunnel over each
// transport.
func TestTransportsEndToEnd(t *testing.T) {
	parallel(t)
	g := httpGateway(t, gatewayOptions{})
	echo := startEcho(t)
	for _, via := range []string{diglett.TransportQUIC, diglett.TransportTCP, diglett.TransportWebSocket} {
		t.Run(via, func(t *testing.T) {
			over := func(c *diglett.Config) {
				c.Transport = via
				c.WebSocketAddr = g.HTTPSAddr
			}
			cfg := agentConfig(t, g, "tcp-"+via)
			cfg.Fingerprint = g.Fingerprint
			over(&cfg)
			ln := mustListen(t, cfg)
			forward(t, ln, echo)
			mustRoundTrip(t, ln.Addr().String(), "over "+via)

			startHTTPAgent(t, g, "web-"+via, nameBackend(t, via), over)
			if code, body := get(t, g.httpClient(t), "https://web-"+via+".gw.test/"); code != 200 || body != via {
				t.Fatalf("HTTP over %s: %d %q", via, code, body)
			}
			waitFor(t, "gateway log", g.Logs, "transport="+via)

			// The gateway's key is checked the same way.
			bad := agentConfig(t, g, "bad-"+via)
			over(&bad)
			bad.Fingerprint = fingerprint(t, newKey(t))
			if _, err := listen(t, bad); !errors.Is(err, diglett.ErrGatewayKeyMismatch) {
				t.Fatalf("wrong key over %s: err = %v, want ErrGatewayKeyMismatch", via, err)
			}
		})
	}
}

// TestSeveralGateways publishes one name on two gateways with two sessions
// to each: visitors of either gateway reach the backend.
func TestSeveralGateways(t *testing.T) {
	parallel(t)
	g1 := httpGateway(t, gatewayOptions{})
	g2 := httpGateway(t, gatewayOptions{Key: g1.Key})
	cfg := agentConfig(t, g1, "both")
	cfg.Gateways = []string{g2.Addr}
	cfg.Fingerprint = g1.Fingerprint
	cfg.Connections = 2
	ln := mustListen(t, cfg)
	forward(t, ln, nameBackend(t, "both"))
	waitForN(t, "first gateway log", g1.Logs, "agent logged in", 2)
	waitForN(t, "second gateway log", g2.Logs, "agent logged in", 2)
	for _, g := range []*testGateway{g1, g2} {
		if code, body := get(t, g.httpClient(t), "http://both.gw.test/"); code != 200 || body != "both" {
			t.Fatalf("through %s: %d %q", g.Addr, code, body)
		}
	}
	all := ln.AllTunnels()
	if len(all) != 2 || all[0].Addr.String() == all[1].Addr.String() {
		t.Fatalf("AllTunnels = %v, want one tunnel on each gateway", all)
	}
	if ln.Addr().String() != all[0].Addr.String() {
		t.Fatalf("Addr = %v, want the first gateway's %v", ln.Addr(), all[0].Addr)
	}
}

// TestWebSocketOnHTTPSPort reaches the gateway only through its HTTPS port,
// as an agent that may only make HTTPS connections would: the gateway
// answers it with its own key, which the agent pins.
func TestWebSocketOnHTTPSPort(t *testing.T) {
	parallel(t)
	g := httpGateway(t, gatewayOptions{})
	cfg := agentConfig(t, g, "web")
	cfg.Transport = diglett.TransportWebSocket
	cfg.Gateway = "127.0.0.1:" + strconv.Itoa(addrPortOf(t, unusedAddr(t)))
	cfg.WebSocketAddr = g.HTTPSAddr
	cfg.Fingerprint = g.Fingerprint
	ln := mustListen(t, cfg)
	forward(t, ln, nameBackend(t, "through 443"))
	if code, body := get(t, g.httpClient(t), "https://web.gw.test/"); code != 200 || body != "through 443" {
		t.Fatalf("%d %q", code, body)
	}

	// Another key on the HTTPS port is refused like on the agent port.
	cfg = agentConfig(t, g, "web2")
	cfg.Transport = diglett.TransportWebSocket
	cfg.Gateway = g.HTTPSAddr
	cfg.Fingerprint = fingerprint(t, newKey(t))
	if _, err := listen(t, cfg); !isKeyMismatch(err) {
		t.Fatalf("wrong fingerprint over WebSocket: err = %v", err)
	}
}

func isKeyMismatch(err error) bool {
	return err != nil && strings.Contains(err.Error(), "gateway key mismatch")
}

func addrPortOf(t testing.TB, addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return n
}

// blockPort drops every packet to port on loopback (proto "udp" or "tcp")
// until the test ends, as a firewall that answers nothing would.
func blockPort(t *testing.T, proto string, port int) (unblock func()) {
	t.Helper()
	return dropRules(t, []string{"-p", proto, "--dport", strconv.Itoa(port)})
}

// silence drops every packet to and from port on loopback, as a peer that
// vanished without a FIN or a reset would look.
func silence(t *testing.T, proto string, port int) (unblock func()) {
	t.Helper()
	return dropRules(t, []string{"-p", proto, "--dport", strconv.Itoa(port)}, []string{"-p", proto, "--sport", strconv.Itoa(port)})
}

// dropRules adds a DROP rule on loopback input for each match, removed by
// unblock or when the test ends. Without iptables the test fails under
// CI=true and is skipped otherwise.
func dropRules(t *testing.T, matches ...[]string) (unblock func()) {
	t.Helper()
	testutil.Program(t, "iptables")
	var rules [][]string
	for _, m := range matches {
		rules = append(rules, append(append([]string{"INPUT", "-i", "lo"}, m...), "-j", "DROP"))
	}
	var once sync.Once
	unblock = func() {
		once.Do(func() {
			for _, rule := range rules {
				if out, err := exec.Command("iptables", append([]string{"-w", "-D"}, rule...)...).CombinedOutput(); err != nil {
					t.Errorf("iptables: %v: %s", err, out)
				}
			}
		})
	}
	for i, rule := range rules {
		if out, err := exec.Command("iptables", append([]string{"-w", "-I"}, rule...)...).CombinedOutput(); err != nil {
			rules = rules[:i]
			unblock()
			testutil.Unavailable(t, "iptables: %v: %s", err, out)
		}
	}
	t.Cleanup(unblock)
	return unblock
}

// TestDeadPeerDetected silences an agent's session (every packet dropped,
// no FIN, no reset) on each transport: both sides notice within the idle
// timeout, and the agent is back once the network is.
func TestDeadPeerDetected(t *testing.T) {
	parallel(t)
	for _, tc := range []struct{ via, proto string }{
		{diglett.TransportTCP, "tcp"},
		{diglett.TransportQUIC, "udp"},
	} {
		t.Run(tc.via, func(t *testing.T) {
			g := startGateway(t, gatewayOptions{})
			log, logs := newLogger(t, "agent")
			cfg := agentConfig(t, g, "quiet")
			cfg.Logger = log
			cfg.Transport = tc.via
			cfg.Fingerprint = g.Fingerprint
			ln := mustListen(t, cfg)
			forward(t, ln, startEcho(t))
			unblock := silence(t, tc.proto, addrPortOf(t, g.Addr))
			// Both notice within the idle timeout; "eventually" adds
			// slack for a loaded machine.
			err := testutil.Poll(testKeepAlive+eventually, func() error {
				if !strings.Contains(g.Logs.String(), "agent disconnected") {
					return errors.New("the gateway has not noticed")
				}
				if !strings.Contains(logs.String(), "disconnected from gateway") {
					return errors.New("the agent has not noticed")
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			unblock()
			// The agent logs in again, then registers: poll until the
			// tunnel serves.
			waitForN(t, "gateway log", g.Logs, "agent logged in", 2)
			if err := testutil.Poll(eventually, func() error { return roundTrip(ln.Addr().String(), "back after the silence") }); err != nil {
				t.Fatalf("after the silence: %v", err)
			}
		})
	}
}

// TestAutoFallback blocks UDP, then raw TCP, to the agent port: the agent
// says which transport it chose and why, the tunnel works, and once UDP is
// open again it moves to QUIC.
func TestAutoFallback(t *testing.T) {
	parallel(t)
	g := httpGateway(t, gatewayOptions{})
	port := addrPortOf(t, g.Addr)
	newAgent := func(t *testing.T, name string) (*diglett.Listener, *logSink) {
		log, sink := newLogger(t, "agent "+name)
		cfg := agentConfig(t, g, name)
		cfg.Logger = log
		cfg.Transport = diglett.TransportAuto
		cfg.WebSocketAddr = g.HTTPSAddr
		cfg.Fingerprint = g.Fingerprint
		cfg.UpgradeInterval = time.Second
		ln := mustListen(t, cfg)
		forward(t, ln, nameBackend(t, name))
		return ln, sink
	}
	c := g.httpClient(t)

	t.Run("tcp blocked", func(t *testing.T) {
		unblockTCP := blockPort(t, "tcp", port)
		_, logs := newAgent(t, "notcp")
		waitFor(t, "agent log", logs, "connected over quic")
		if !strings.Contains(logs.String(), "tcp: ") {
			t.Errorf("the agent did not say why TCP was not used:\n%s", logs)
		}
		if code, body := get(t, c, "http://notcp.gw.test/"); code != 200 || body != "notcp" {
			t.Fatalf("%d %q", code, body)
		}
		unblockTCP()
		waitFor(t, "agent log", logs, "from=quic to=tcp")
		for range 20 {
			if code, body := get(t, c, "http://notcp.gw.test/"); code != 200 || body != "notcp" {
				t.Fatalf("after the move: %d %q", code, body)
			}
		}
	})
	t.Run("udp and tcp blocked", func(t *testing.T) {
		blockPort(t, "udp", port)
		blockPort(t, "tcp", port)
		_, logs := newAgent(t, "onlyhttps")
		waitFor(t, "agent log", logs, "connected over ws")
		if code, body := get(t, c, "http://onlyhttps.gw.test/"); code != 200 || body != "onlyhttps" {
			t.Fatalf("%d %q", code, body)
		}
	})
}

// TestSessionLossUnderLoad keeps two sessions for one agent and kills one
// while visitors keep coming: once the gateway has seen it go, no new
// visitor fails, and the agent replaces the session.
func TestSessionLossUnderLoad(t *testing.T) {
	checkLeaks(t)
	g := startGateway(t, gatewayOptions{})
	p := startProxy(t, g.Addr)
	cfg := agentConfig(t, g, "ha")
	cfg.Gateway = p.Addr()
	cfg.Fingerprint = g.Fingerprint
	cfg.Connections = 2
	ln := mustListen(t, cfg)
	forward(t, ln, startEcho(t))
	waitForN(t, "gateway log", g.Logs, "agent logged in", 2)
	public := ln.Addr().String()

	l := startLoad(t, 8, func(w, i int) error {
		return roundTrip(public, fmt.Sprintf("worker %d visitor %d", w, i))
	})
	time.Sleep(300 * time.Millisecond)
	p.KillOne()
	waitFor(t, "gateway log", g.Logs, "agent disconnected")
	l.mark()
	time.Sleep(time.Second)
	l.finish(t, "one session died")
	// The agent replaces the lost session.
	waitForN(t, "gateway log", g.Logs, "agent logged in", 3)
}

// TestWebSocketThroughProxy reaches the gateway only through a real HTTP
// forward proxy (tinyproxy), with proxy basic auth, and checks the clear
// refusals when the proxy wants credentials or denies the port.
func TestWebSocketThroughProxy(t *testing.T) {
	parallel(t)
	g := httpGateway(t, gatewayOptions{})
	httpsPort := addrPortOf(t, g.HTTPSAddr)
	p := proxytest.Start(t, proxytest.Options{User: "agent", Password: "s3cret", ConnectPorts: []int{httpsPort}})
	agent := func(name string, proxy *url.URL) diglett.Config {
		cfg := agentConfig(t, g, name)
		cfg.Transport = diglett.TransportWebSocket
		cfg.Gateway = g.Addr
		cfg.WebSocketAddr = g.HTTPSAddr
		cfg.Fingerprint = g.Fingerprint
		cfg.Proxy = proxy
		return cfg
	}
	ln := mustListen(t, agent("proxied", p.AuthURL()))
	forward(t, ln, nameBackend(t, "through the proxy"))
	if code, body := get(t, g.httpClient(t), "https://proxied.gw.test/"); code != 200 || body != "through the proxy" {
		t.Fatalf("%d %q", code, body)
	}
	if got := p.Connects(); len(got) == 0 || got[0] != g.HTTPSAddr {
		t.Fatalf("the proxy saw CONNECTs to %v, want %s", got, g.HTTPSAddr)
	}

	if _, err := listen(t, agent("noauth", p.URL)); err == nil || !strings.Contains(err.Error(), "407") {
		t.Errorf("without proxy credentials: err = %v, want the proxy's 407", err)
	}
	// The proxy allows only the HTTPS port: the agent port is refused.
	cfg := agent("agentport", p.AuthURL())
	cfg.WebSocketAddr = g.Addr
	if _, err := listen(t, cfg); err == nil || !strings.Contains(err.Error(), "refused CONNECT") {
		t.Errorf("to a port the proxy denies: err = %v, want the proxy's refusal", err)
	}
}
