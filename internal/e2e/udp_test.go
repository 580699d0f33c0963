package e2e

import (
	"encoding/binary"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/testutil/dnstest"
)

// UDP tunnels through both command lines in-process, over each transport:
// a UDP echo backend with many visitors at once (loss and order
// reported), a real name server asked by the real dig, idle flows
// expiring, the gateway's caps on flows, and datagrams too large for a
// QUIC path.

// TestUDPEcho has 16 visitors at once each send 200 numbered datagrams of
// 8 to 1200 bytes (one every 5ms at most, 4 in flight at most) through a
// UDP tunnel to an echo backend: every reply reaches the visitor that
// sent it, whole, and loss stays small. It reports loss and reordering
// per transport.
func TestUDPEcho(t *testing.T) {
	parallel(t)
	g := startUDPGateway(t)
	load := udpLoad{visitors: 16, count: 200, pace: 5 * time.Millisecond, window: 4, lostAfter: time.Second}
	for _, via := range udpTransports {
		t.Run(via, func(t *testing.T) {
			t.Parallel()
			echo := startUDPEcho(t)
			_, public := g.startUDPAgent(t, via, "echo-"+via, echo.Addr())
			st := load.run(t, public)
			t.Logf("over %s: %d visitors sent %d datagrams: %d lost (%.2f%%), %d out of order, %d duplicated; %d datagrams to set the flows up",
				via, load.visitors, st.sent, st.lost(), 100*float64(st.lost())/float64(max(st.sent, 1)),
				st.outOfOrder, st.duplicates, st.setupSends)
			if st.wrongVisitor != 0 || st.malformed != 0 {
				t.Errorf("over %s: %d replies reached the wrong visitor, %d were merged, split or changed", via, st.wrongVisitor, st.malformed)
			}
			if st.duplicates != 0 {
				t.Errorf("over %s: %d replies duplicated", via, st.duplicates)
			}
			if st.lost()*20 > st.sent {
				t.Errorf("over %s: %d of %d datagrams lost, more than 5%%", via, st.lost(), st.sent)
			}
			// A socket of its own to the backend per visitor: the
			// backend saw as many sources as there were visitors.
			if n := len(echo.Sources()); n != load.visitors {
				t.Errorf("over %s: the backend saw %d sources, want one per visitor (%d)", via, n, load.visitors)
			}
		})
	}
}

// TestUDPDNS publishes a real name server through a UDP tunnel: the real
// dig, several at once, gets each its own answer.
func TestUDPDNS(t *testing.T) {
	parallel(t)
	const (
		zone  = "udp.test"
		hosts = 8
	)
	ns := startDNS(t, zone, hosts)
	dig := testutil.Program(t, dnstest.DigProgram)
	g := startUDPGateway(t)
	for _, via := range udpTransports {
		t.Run(via, func(t *testing.T) {
			t.Parallel()
			_, public := g.startUDPAgent(t, via, "dns-"+via, ns.Addr)
			var wg sync.WaitGroup
			for i := 1; i <= hosts; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					name := fmt.Sprintf("host%d.%s", i, zone)
					addrs, out, err := digA(dig, public, name)
					if err != nil {
						t.Errorf("over %s: dig %s: %v\n%s", via, name, err, out)
						return
					}
					if want := fmt.Sprintf("192.0.2.%d", i); !slices.Equal(addrs, []string{want}) {
						t.Errorf("over %s: dig %s answered %v, want [%s]\n%s", via, name, addrs, want, out)
					}
				}()
			}
			wg.Wait()
		})
	}
}

// TestUDPIdleFlowsExpire checks that a flow idle for its timeout, the
// gateway's or the agent's, is closed: the agent's socket to the backend
// goes, and the visitor's next datagram opens a new flow with a new
// socket.
func TestUDPIdleFlowsExpire(t *testing.T) {
	parallel(t)
	needProc(t)
	gateways := map[string]*udpGateway{
		// The gateway's timer ends the flow, the agent's is long.
		"gateway": startUDPGateway(t, "--udp-idle-timeout", "1s"),
		// The agent's timer ends the flow, the gateway's is long.
		"agent": startUDPGateway(t, "--udp-idle-timeout", "1m"),
	}
	agentTimeout := map[string]string{"gateway": "1m", "agent": "1s"}
	for _, via := range udpTransports {
		for _, who := range []string{"gateway", "agent"} {
			t.Run(via+"/"+who, func(t *testing.T) {
				t.Parallel()
				echo := startUDPEcho(t)
				name := "idle-" + via
				_, public := gateways[who].startUDPAgent(t, via, name, echo.Addr(),
					"--udp-idle-timeout", agentTimeout[who])
				c := udpVisitor(t, nil, public)
				if _, err := exchange(c, []byte("first"), 500*time.Millisecond, eventually); err != nil {
					t.Fatalf("over %s: %v", via, err)
				}
				first := echo.Sources()
				if len(first) != 1 {
					t.Fatalf("over %s: backend sources %v, want one", via, first)
				}
				port := int(first[0].Port())
				// A flow in use outlives the timeout: a datagram every
				// 300ms for 1.5s keeps it, and its socket.
				tick := time.NewTicker(300 * time.Millisecond)
				for i := range 5 {
					<-tick.C
					if _, err := exchange(c, []byte(fmt.Sprintf("busy %d", i)), 250*time.Millisecond, promptly); err != nil {
						t.Fatalf("over %s: a busy flow: %v", via, err)
					}
				}
				tick.Stop()
				if all := echo.Sources(); len(all) != 1 {
					t.Fatalf("over %s: backend sources %v: a busy flow was ended by the %s's idle timeout", via, all, who)
				}
				// The flow's socket on the agent closes once idle for
				// the timeout (1s): well within eventually.
				err := testutil.Poll(eventually, func() error {
					if open, _ := udpSocketOpen(port); open {
						return fmt.Errorf("the agent's socket %v to the backend is still open", first[0])
					}
					return nil
				})
				if err != nil {
					t.Fatalf("over %s, %s timeout 1s: %v", via, who, err)
				}
				// The gateway's flow is gone too.
				err = testutil.Poll(eventually, func() error {
					if n := udpFlowsOpen(t, gateways[who], name); n != 0 {
						return fmt.Errorf("the gateway holds %v flows of %s", n, name)
					}
					return nil
				})
				if err != nil {
					t.Fatalf("over %s, %s timeout 1s: %v", via, who, err)
				}
				if _, err := exchange(c, []byte("second"), 500*time.Millisecond, eventually); err != nil {
					t.Fatalf("over %s, after the flow expired: %v", via, err)
				}
				all := echo.Sources()
				if len(all) != 2 || all[1] == first[0] {
					t.Fatalf("over %s: backend sources %v, want a new one after the flow expired", via, all)
				}
			})
		}
	}
}

// TestUDPFlowCaps checks the gateway's cap on flows per visitor address (a
// third visitor socket of 127.0.0.1 gets nothing while one of 127.0.0.9
// is served), the gateway's cap on flows per tunnel and the agent's.
func TestUDPFlowCaps(t *testing.T) {
	parallel(t)
	g := startUDPGateway(t, "--udp-max-flows-per-source", "2")
	other := net.IPv4(127, 0, 0, 9)
	for _, via := range udpTransports {
		t.Run(via, func(t *testing.T) {
			t.Parallel()
			echo := startUDPEcho(t)
			_, public := g.startUDPAgent(t, via, "caps-"+via, echo.Addr())
			var first []*net.UDPConn
			for i := range 2 {
				c := udpVisitor(t, nil, public)
				if _, err := exchange(c, []byte(fmt.Sprintf("visitor %d", i)), 500*time.Millisecond, eventually); err != nil {
					t.Fatalf("over %s: visitor %d of 127.0.0.1: %v", via, i, err)
				}
				first = append(first, c)
			}
			third := udpVisitor(t, nil, public)
			for range 3 {
				if _, err := third.Write([]byte("third")); err != nil {
					t.Fatal(err)
				}
			}
			expectSilence(t, third, time.Second, "the third visitor of 127.0.0.1")
			if d := udpDrops(t, g, "flow_limit"); d < 3 {
				t.Errorf("over %s: %v datagrams counted dropped for the flow limit, want at least 3", via, d)
			}
			fourth := udpVisitor(t, other, public)
			if _, err := exchange(fourth, []byte("from elsewhere"), 500*time.Millisecond, eventually); err != nil {
				t.Fatalf("over %s: visitor of %v: %v", via, other, err)
			}
			// Anything for the third would have come by now.
			expectSilence(t, third, 200*time.Millisecond, "the third visitor of 127.0.0.1")
			// The first two are still served.
			for i, c := range first {
				if _, err := exchange(c, []byte("again"), 500*time.Millisecond, eventually); err != nil {
					t.Fatalf("over %s: visitor %d again: %v", via, i, err)
				}
			}
			if n := len(echo.Sources()); n != 3 {
				t.Errorf("over %s: the backend saw %d sources, want 3 (the refused visitor none)", via, n)
			}
			waitFor(t, "gateway log", &g.srv.stderr, "udp visitor dropped: its address has as many flows as it may")
		})
	}
	// The gateway's cap on the flows of a tunnel, whatever their source.
	t.Run("tunnel", func(t *testing.T) {
		t.Parallel()
		g := startUDPGateway(t, "--udp-max-flows", "2")
		echo := startUDPEcho(t)
		_, public := g.startUDPAgent(t, "tcp", "tunnelcap", echo.Addr())
		var served []*net.UDPConn
		for i, ip := range []net.IP{nil, other} {
			c := udpVisitor(t, ip, public)
			if _, err := exchange(c, []byte("in"), 500*time.Millisecond, eventually); err != nil {
				t.Fatalf("visitor %d: %v", i, err)
			}
			served = append(served, c)
		}
		third := udpVisitor(t, net.IPv4(127, 0, 0, 10), public)
		for range 3 {
			third.Write([]byte("over the cap"))
		}
		expectSilence(t, third, time.Second, "a third flow above the gateway's --udp-max-flows 2")
		waitFor(t, "gateway log", &g.srv.stderr, "udp visitor dropped: the tunnel has as many flows as it may")
		for i, c := range served {
			if _, err := exchange(c, []byte("again"), 500*time.Millisecond, eventually); err != nil {
				t.Fatalf("visitor %d again: %v", i, err)
			}
		}
	})
	t.Run("agent", func(t *testing.T) {
		t.Parallel()
		echo := startUDPEcho(t)
		a, public := g.startUDPAgent(t, "tcp", "agentcap", echo.Addr(), "--udp-max-flows", "1")
		c := udpVisitor(t, nil, public)
		if _, err := exchange(c, []byte("one"), 500*time.Millisecond, eventually); err != nil {
			t.Fatalf("first visitor: %v", err)
		}
		second := udpVisitor(t, other, public)
		for range 3 {
			second.Write([]byte("two"))
		}
		expectSilence(t, second, time.Second, "a second flow above the agent's --udp-max-flows 1")
		waitFor(t, "agent log", &a.stderr, "UDP flow refused")
		if _, err := exchange(c, []byte("one again"), 500*time.Millisecond, eventually); err != nil {
			t.Fatalf("first visitor again: %v", err)
		}
		if n := len(echo.Sources()); n != 1 {
			t.Errorf("the backend saw %d sources, want 1", n)
		}
	})
}

// TestUDPDatagramTooLargeForQUIC sends datagrams of 1200 to 1500 bytes
// through a tunnel over QUIC: those too large for the QUIC path are
// dropped (and counted by the gateway), the others arrive, and the test
// reports the limit; over TCP all of them arrive. The same holds the
// other way, for a backend's answers.
func TestUDPDatagramTooLargeForQUIC(t *testing.T) {
	parallel(t)
	g := startUDPGateway(t)
	const (
		small = 1200 // fits any QUIC path
		large = 1500 // more than a QUIC packet (1452 bytes at most) carries
	)
	// Largest first: QUIC's limit only grows (once the path's size is
	// known), so the sizes dropped are always the first ones sent.
	sizes := func() []int {
		var s []int
		for n := large; n >= small; n -= 10 {
			s = append(s, n)
		}
		return s
	}()
	for _, via := range []string{"quic", "tcp"} {
		t.Run(via, func(t *testing.T) {
			t.Parallel()
			echo := startUDPEcho(t)
			name := "large-" + via
			agent, public := g.startUDPAgent(t, via, name, echo.Addr())
			c := udpVisitor(t, nil, public)
			if _, err := exchange(c, sizedDatagram(small), 500*time.Millisecond, eventually); err != nil {
				t.Fatalf("over %s: %d bytes: %v", via, small, err)
			}
			before := udpDrops(t, g, "too_large")
			echoed := sendSizes(t, c, sizes)
			largest := 0
			for n := range echoed {
				largest = max(largest, n)
			}
			t.Logf("over %s: the largest datagram echoed of %d..%d bytes: %d bytes", via, small, large, largest)
			switch via {
			case "quic":
				if echoed[large] || !echoed[small] {
					t.Fatalf("over quic: %d bytes echoed %v, %d bytes echoed %v; want only the small one", small, echoed[small], large, echoed[large])
				}
				// Every size up to the limit passes, none above it.
				missing := 0
				for _, n := range sizes {
					if n <= largest && !echoed[n] {
						t.Errorf("over quic: %d bytes lost, below the path's limit %d", n, largest)
					}
					if !echoed[n] {
						missing++
					}
				}
				// Each side knows its own path's size: the gateway drops
				// (and counts) those too large on the way to the agent,
				// the agent (its log says) the echoes too large on the
				// way back.
				var gateway, agentSide int
				err := testutil.Poll(eventually, func() error {
					gateway = int(udpDrops(t, g, "too_large") - before)
					agentSide = strings.Count(agent.stderr.String(), "datagram dropped: too large for the QUIC path")
					if gateway+agentSide < missing {
						return fmt.Errorf("%d drops counted by the gateway and %d logged by the agent, want %d in all", gateway, agentSide, missing)
					}
					return nil
				})
				if err != nil {
					t.Fatalf("over quic: datagrams too large went unaccounted: %v", err)
				}
				t.Logf("over quic: %d of %d sizes dropped as too large: %d by the gateway, %d by the agent", missing, len(sizes), gateway, agentSide)
			default:
				for _, n := range sizes {
					if !echoed[n] {
						t.Errorf("over %s: %d bytes lost", via, n)
					}
				}
			}

			// The other way: a backend whose answers are larger than
			// the questions.
			sizer := startUDPBackend(t, func(p []byte) []byte {
				if len(p) != 4 {
					return nil
				}
				return sizedDatagram(int(min(binary.BigEndian.Uint32(p), large)))
			})
			a, public := g.startUDPAgent(t, via, "answers-"+via, sizer.Addr())
			ask := func(n int) []byte { return binary.BigEndian.AppendUint32(nil, uint32(n)) }
			c = udpVisitor(t, nil, public)
			want := sizedDatagram(small)
			if err := askFor(c, ask(small), want); err != nil {
				t.Fatalf("over %s: an answer of %d bytes: %v", via, small, err)
			}
			err := askFor(c, ask(large), sizedDatagram(large))
			switch via {
			case "quic":
				if err == nil {
					t.Fatalf("over quic: an answer of %d bytes came through", large)
				}
				// The agent dropped it, and said so.
				waitFor(t, "agent log", &a.stderr, "datagram dropped: too large for the QUIC path")
			default:
				if err != nil {
					t.Fatalf("over %s: an answer of %d bytes: %v", via, large, err)
				}
			}
		})
	}
}

// askFor sends question from c and waits for answer, asking again every
// half second, for at most 2 seconds (the answer may be one that never
// comes).
func askFor(c *net.UDPConn, question, answer []byte) error {
	deadline := time.Now().Add(2 * time.Second)
	buf := make([]byte, 64<<10)
	for time.Now().Before(deadline) {
		if _, err := c.Write(question); err != nil {
			return err
		}
		c.SetReadDeadline(earliest(deadline, time.Now().Add(500*time.Millisecond)))
		n, err := c.Read(buf)
		if err != nil {
			continue
		}
		if string(buf[:n]) != string(answer) {
			return fmt.Errorf("answered %d bytes, want %d", n, len(answer))
		}
		return nil
	}
	return fmt.Errorf("no answer of %d bytes within 2s", len(answer))
}

// sizedDatagram is n bytes that say their size in the first 4.
func sizedDatagram(n int) []byte {
	p := make([]byte, n)
	binary.BigEndian.PutUint32(p, uint32(n))
	for i := 4; i < n; i++ {
		p[i] = byte(i)
	}
	return p
}

// sendSizes sends a datagram of each size from c, paced, and returns
// the sizes echoed back whole, once no reply came for quietAfterSend.
func sendSizes(t *testing.T, c *net.UDPConn, sizes []int) map[int]bool {
	t.Helper()
	// Paced: a burst could overflow a socket buffer, which would pass
	// for the drop under test.
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for _, n := range sizes {
		if _, err := c.Write(sizedDatagram(n)); err != nil {
			t.Fatalf("send %d bytes: %v", n, err)
		}
		<-tick.C
	}
	echoed := make(map[int]bool)
	buf := make([]byte, 64<<10)
	for len(echoed) < len(sizes) {
		c.SetReadDeadline(time.Now().Add(quietAfterSend))
		n, err := c.Read(buf)
		if err != nil {
			if !isTimeout(err) {
				t.Fatalf("read: %v", err)
			}
			break
		}
		if n >= 4 && int(binary.BigEndian.Uint32(buf)) == n && string(buf[:n]) == string(sizedDatagram(n)) {
			echoed[n] = true
		} else {
			t.Errorf("a reply of %d bytes is no datagram sent", n)
		}
	}
	return echoed
}
