package gateway

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/quictransport"
	"github.com/diglett/diglett/internal/transport/tlsmux"
	"go.uber.org/goleak"
)

// udpObserver counts the gateway's UDP events.
type udpObserver struct {
	NopObserver
	mu             sync.Mutex
	drops          map[DatagramDrop]int
	opened, closed int
}

func (o *udpObserver) UDPFlowOpened(string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.opened++
}

func (o *udpObserver) UDPFlowClosed(string, int64, int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed++
}

func (o *udpObserver) DatagramDropped(_ string, r DatagramDrop) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.drops == nil {
		o.drops = make(map[DatagramDrop]int)
	}
	o.drops[r]++
}

func (o *udpObserver) dropped(r DatagramDrop) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.drops[r]
}

func (o *udpObserver) allDropped() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, c := range o.drops {
		n += c
	}
	return n
}

// udpGateway is a gateway taking agents over TLS and QUIC on loopback.
type udpGateway struct {
	*Server
	tcpAddr, quicAddr string
	obs               *udpObserver
	access, logs      *testutil.Buffer
}

// startUDPGateway starts a gateway for cfg; it is closed when the test
// ends.
func startUDPGateway(t *testing.T, cfg Config) *udpGateway {
	t.Helper()
	g := &udpGateway{obs: &udpObserver{}, access: &testutil.Buffer{}, logs: &testutil.Buffer{}}
	cfg.TLS = testutil.ServerTLS(t)
	cfg.Auth = allowAll
	cfg.PublicHost = "127.0.0.1"
	cfg.Observer = g.obs
	cfg.Logger = slog.New(slog.NewTextHandler(g.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.AccessLog = slog.New(slog.NewTextHandler(g.access, nil))
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	g.Server = srv
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g.tcpAddr, g.quicAddr = ln.Addr().String(), pc.LocalAddr().String()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); srv.Serve(ln) }()
	go func() { defer wg.Done(); srv.ServeQUIC(pc) }()
	t.Cleanup(func() {
		srv.Close()
		wg.Wait()
		if t.Failed() {
			t.Logf("gateway log:\n%s", g.logs)
		}
	})
	return g
}

// port is the UDP port of tunnel name; it fails the test if there is none.
func (g *udpGateway) port(t *testing.T, name string) *udpPort {
	t.Helper()
	tn := g.reg.route(name)
	if tn == nil {
		t.Fatalf("no tunnel %q", name)
	}
	u, ok := tn.ln.(*udpPort)
	if !ok {
		t.Fatalf("tunnel %q has no UDP port", name)
	}
	return u
}

// fakeUDPAgent is an agent made of the real transports: it logs in,
// registers, and serves each UDP flow by echoing its datagrams, in frames
// or in QUIC datagrams as the flow's header says.
type fakeUDPAgent struct {
	sess   transport.Session
	ctrl   transport.Stream
	hello  *protocol.Hello
	silent bool // answers no status: flows wait for it

	opened, ended atomic.Int64
	mu            sync.Mutex
	headers       []protocol.StreamHeader
}

// dialUDPAgent connects an agent to g over via ("tcp" or "quic") and
// logs it in.
func dialUDPAgent(t *testing.T, g *udpGateway, via string, silent bool) *fakeUDPAgent {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	tc := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{protocol.ALPN}, InsecureSkipVerify: true}
	var sess transport.Session
	var err error
	switch via {
	case "tcp":
		var raw net.Conn
		raw, err = net.Dial("tcp", g.tcpAddr)
		if err == nil {
			sess, err = tlsmux.Client(ctx, raw, tc, transport.Config{})
		}
	case "quic":
		sess, err = quictransport.Dial(ctx, g.quicAddr, tc, transport.Config{})
	}
	if err != nil {
		t.Fatalf("dial %s: %v", via, err)
	}
	a := &fakeUDPAgent{sess: sess, silent: silent}
	t.Cleanup(func() { sess.Close() })
	if ds, ok := sess.(transport.DatagramSession); ok {
		ds.HandleDatagrams(func(p []byte) {
			if flow, payload, ok := protocol.ParseFlowDatagram(p); ok {
				ds.SendDatagram(protocol.AppendFlowDatagram(nil, flow, payload))
			}
		})
	}
	a.ctrl, err = sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a.ctrl.SetDeadline(time.Now().Add(10 * time.Second))
	if err := protocol.WriteMessage(a.ctrl, &protocol.Hello{Version: protocol.Version}); err != nil {
		t.Fatal(err)
	}
	m, err := protocol.ReadMessage(a.ctrl)
	if err != nil {
		t.Fatalf("read hello: %v", err)
	}
	a.hello = m.(*protocol.Hello)
	if err := protocol.WriteMessage(a.ctrl, &protocol.Login{Token: "t"}); err != nil {
		t.Fatal(err)
	}
	if m, err := protocol.ReadMessage(a.ctrl); err != nil {
		t.Fatalf("read login reply: %v", err)
	} else if _, ok := m.(*protocol.LoginOK); !ok {
		t.Fatalf("login: got %#v", m)
	}
	go a.serve()
	return a
}

// register asks for name; it returns the gateway's reply.
func (a *fakeUDPAgent) register(t *testing.T, req *protocol.Register) protocol.Message {
	t.Helper()
	if err := protocol.WriteMessage(a.ctrl, req); err != nil {
		t.Fatal(err)
	}
	m, err := protocol.ReadMessage(a.ctrl)
	if err != nil {
		t.Fatalf("read register reply: %v", err)
	}
	return m
}

// registerUDP registers name as a UDP tunnel and returns its port.
func (a *fakeUDPAgent) registerUDP(t *testing.T, name string, allow ...string) *protocol.Registered {
	t.Helper()
	m := a.register(t, &protocol.Register{Name: name, UDP: true, AllowIPs: allow})
	r, ok := m.(*protocol.Registered)
	if !ok {
		t.Fatalf("register %s: got %#v", name, m)
	}
	return r
}

// serve takes the gateway's streams until the session ends.
func (a *fakeUDPAgent) serve() {
	for {
		st, err := a.sess.AcceptStream(context.Background())
		if err != nil {
			return
		}
		go a.serveFlow(st)
	}
}

func (a *fakeUDPAgent) serveFlow(st transport.Stream) {
	defer st.Close()
	defer a.ended.Add(1)
	h, err := protocol.ReadStreamHeader(st)
	if err != nil || !h.UDP {
		return
	}
	a.mu.Lock()
	a.headers = append(a.headers, h)
	a.mu.Unlock()
	a.opened.Add(1)
	if a.silent {
		io.Copy(io.Discard, st)
		return
	}
	if _, err := st.Write([]byte{byte(protocol.StatusOK)}); err != nil {
		return
	}
	if h.Flow != 0 {
		// The datagrams go through the session's handler; the stream
		// ends the flow.
		io.Copy(io.Discard, st)
		return
	}
	buf := make([]byte, protocol.MaxDatagramSize)
	for {
		n, err := protocol.ReadDatagramFrame(st, buf)
		if err != nil {
			return
		}
		frame, _ := protocol.AppendDatagramFrame(nil, buf[:n])
		if _, err := st.Write(frame); err != nil {
			return
		}
	}
}

// visitor is a UDP socket from local (an IP) to port on loopback.
func visitor(t *testing.T, local string, port int) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(local)}, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// exchange sends msg and returns the datagram that comes back.
func exchange(c *net.UDPConn, msg string) (string, error) {
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, protocol.MaxDatagramSize)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// Datagrams reach a UDP tunnel's agent and come back to the visitor that
// sent them, over TLS + multiplexer (frames on a stream per flow) and
// over QUIC (QUIC datagrams), each visitor with its own flow; each flow
// is logged when it ends.
func TestUDPEcho(t *testing.T) {
	for _, via := range []string{"tcp", "quic"} {
		t.Run(via, func(t *testing.T) {
			t.Cleanup(func() { goleak.VerifyNone(t) }) // after the gateway and agents closed
			g := startUDPGateway(t, Config{})
			a := dialUDPAgent(t, g, via, false)
			if !slices.Contains(a.hello.Features, protocol.FeatureUDP) {
				t.Fatalf("gateway's hello lists %q, want %q", a.hello.Features, protocol.FeatureUDP)
			}
			reg := a.registerUDP(t, "game")
			v1 := visitor(t, "127.0.0.1", reg.Port)
			v2 := visitor(t, "127.0.0.1", reg.Port)
			for i := range 20 {
				for j, v := range []*net.UDPConn{v1, v2} {
					msg := fmt.Sprintf("visitor %d datagram %d", j, i)
					got, err := exchange(v, msg)
					if err != nil {
						t.Fatalf("%s: %v", msg, err)
					}
					if got != msg {
						t.Fatalf("sent %q, got back %q", msg, got)
					}
				}
			}
			// A datagram of 1 KB, whole, and an empty one.
			big := strings.Repeat("x", 1200)
			if got, err := exchange(v1, big); err != nil || got != big {
				t.Fatalf("1000-byte datagram: got %d bytes, %v", len(got), err)
			}
			if got, err := exchange(v2, ""); err != nil || got != "" {
				t.Fatalf("empty datagram: got %q, %v", got, err)
			}
			a.mu.Lock()
			headers := slices.Clone(a.headers)
			a.mu.Unlock()
			if len(headers) != 2 {
				t.Fatalf("agent saw %d flows, want 2: %+v", len(headers), headers)
			}
			for _, h := range headers {
				if h.Name != "game" || (h.Flow != 0) != (via == "quic") {
					t.Errorf("flow header %+v over %s", h, via)
				}
			}
			if n := g.port(t, "game").flowCount(); n != 2 {
				t.Errorf("gateway holds %d flows, want 2", n)
			}
			// The agent leaves: the flows end and are logged.
			a.sess.Close()
			err := testutil.Poll(10*time.Second, func() error {
				if n := strings.Count(g.access.String(), `msg="udp visitor"`); n != 2 {
					return fmt.Errorf("%d access log lines, want 2", n)
				}
				return nil
			})
			if err != nil {
				t.Fatalf("%v:\n%s", err, g.access)
			}
			for _, l := range g.access.Lines() {
				for _, want := range []string{"tunnel=game", "datagrams_in=21", "datagrams_out=21", "bytes_in=", "session=", "duration="} {
					if !strings.Contains(l, want) {
						t.Errorf("access log line lacks %q: %s", want, l)
					}
				}
			}
			g.obs.mu.Lock()
			opened, closed := g.obs.opened, g.obs.closed
			g.obs.mu.Unlock()
			if opened != 2 || closed != 2 {
				t.Errorf("observer told of %d flows opened, %d closed; want 2 and 2", opened, closed)
			}
		})
	}
}

// The caps on flows per source address and per tunnel, and the tunnel's
// allowed IPs, drop the datagrams of new visitors, counted by reason;
// the visitors within them are served.
func TestUDPFlowCaps(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	g := startUDPGateway(t, Config{UDPMaxFlows: 3, UDPMaxFlowsPerSource: 2})
	a := dialUDPAgent(t, g, "tcp", false)
	reg := a.registerUDP(t, "dns", "127.0.0.0/30")
	served := []*net.UDPConn{visitor(t, "127.0.0.1", reg.Port), visitor(t, "127.0.0.1", reg.Port), visitor(t, "127.0.0.2", reg.Port)}
	for i, v := range served {
		msg := "query " + strconv.Itoa(i)
		if got, err := exchange(v, msg); err != nil || got != msg {
			t.Fatalf("visitor %d within the caps: got %q, %v", i, got, err)
		}
	}
	// A third port of 127.0.0.1 (per source), 127.0.0.3 (per tunnel),
	// 127.0.0.9 (not allowed).
	for _, v := range []*net.UDPConn{visitor(t, "127.0.0.1", reg.Port), visitor(t, "127.0.0.3", reg.Port), visitor(t, "127.0.0.9", reg.Port)} {
		for range 3 {
			if _, err := v.Write([]byte("over")); err != nil {
				t.Fatal(err)
			}
		}
	}
	err := testutil.Poll(10*time.Second, func() error {
		if n, m := g.obs.dropped(DropFlowLimit), g.obs.dropped(DropNotAllowed); n != 6 || m != 3 {
			return fmt.Errorf("dropped %d datagrams over the caps (want 6) and %d not allowed (want 3)", n, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := g.port(t, "dns").flowCount(); n != 3 {
		t.Errorf("%d flows, want 3", n)
	}
	if n := a.opened.Load(); n != 3 {
		t.Errorf("agent saw %d flows, want 3", n)
	}
	for i, v := range served {
		msg := "again " + strconv.Itoa(i)
		if got, err := exchange(v, msg); err != nil || got != msg {
			t.Fatalf("visitor %d after the drops: got %q, %v", i, got, err)
		}
	}
}

// A flow with no datagram for the idle timeout ends: its agent sees its
// stream end, and the visitor's next datagram opens a new flow.
func TestUDPIdleFlowEnds(t *testing.T) {
	for _, via := range []string{"tcp", "quic"} {
		t.Run(via, func(t *testing.T) {
			t.Cleanup(func() { goleak.VerifyNone(t) }) // after the gateway and agents closed
			g := startUDPGateway(t, Config{UDPIdleTimeout: 300 * time.Millisecond})
			a := dialUDPAgent(t, g, via, false)
			reg := a.registerUDP(t, "wg")
			v := visitor(t, "127.0.0.1", reg.Port)
			if got, err := exchange(v, "ping"); err != nil || got != "ping" {
				t.Fatalf("got %q, %v", got, err)
			}
			err := testutil.Poll(10*time.Second, func() error {
				if n := a.ended.Load(); n != 1 {
					return fmt.Errorf("agent saw %d flows end, want 1", n)
				}
				if n := g.port(t, "wg").flowCount(); n != 0 {
					return fmt.Errorf("gateway holds %d flows, want 0", n)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if got, err := exchange(v, "again"); err != nil || got != "again" {
				t.Fatalf("after the idle end: got %q, %v", got, err)
			}
			if n := a.opened.Load(); n != 2 {
				t.Errorf("agent saw %d flows, want 2", n)
			}
		})
	}
}

// A UDP tunnel has no HTTP address: no URLs in its registration, no
// route for the HTTP ingress, no certificate; the listing says udp.
func TestUDPTunnelHasNoHTTPRoute(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	routes := make(chan Route, 8)
	record := RegistererFunc(func(_ context.Context, r Route) (io.Closer, error) {
		routes <- r
		return io.NopCloser(nil), nil
	})
	g := startUDPGateway(t, Config{Domain: "gw.test", Registerer: record})
	g.SetIngressPorts(80, 443)
	a := dialUDPAgent(t, g, "tcp", false)
	reg := a.registerUDP(t, "voice")
	if reg.HTTPURL != "" || reg.HTTPSURL != "" {
		t.Errorf("UDP tunnel registered with URLs %q %q", reg.HTTPURL, reg.HTTPSURL)
	}
	m := a.register(t, &protocol.Register{Name: "web"})
	if web, ok := m.(*protocol.Registered); !ok || web.HTTPURL == "" {
		t.Fatalf("TCP tunnel: got %#v, want URLs", m)
	}
	if _, ok := g.Tunnel("voice"); ok {
		t.Error("the HTTP ingress finds the UDP tunnel")
	}
	if _, ok := g.Tunnel("web"); !ok {
		t.Error("the HTTP ingress does not find the TCP tunnel")
	}
	if err := g.HostAllowed(context.Background(), "voice.gw.test"); err == nil {
		t.Error("a certificate may be ordered for a UDP tunnel's host")
	}
	for _, ti := range g.Tunnels() {
		want := map[string]string{"voice": "udp", "web": "tcp"}[ti.Name]
		if ti.Protocol != want {
			t.Errorf("tunnel %s listed with protocol %q, want %q", ti.Name, ti.Protocol, want)
		}
		if ti.Name == "voice" && len(ti.Hosts) != 0 {
			t.Errorf("UDP tunnel listed with hosts %v", ti.Hosts)
		}
	}
	// The registerers are told the UDP port, with no host.
	for range 2 {
		select {
		case r := <-routes:
			if r.UDP != (r.Name == "voice") || (r.UDP && len(r.Hosts) != 0) || (!r.UDP && len(r.Hosts) == 0) {
				t.Errorf("registerer told %+v", r)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("registerer not told of both tunnels")
		}
	}
}

// Every registration of a name agrees on udp: a UDP name registered as
// TCP (or the reverse) is refused with port_unavailable.
func TestUDPNameKeepsItsProtocol(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	g := startUDPGateway(t, Config{})
	a := dialUDPAgent(t, g, "tcp", false)
	a.registerUDP(t, "game")
	if m := a.register(t, &protocol.Register{Name: "web"}); m.Type() != protocol.TypeRegistered {
		t.Fatalf("register web: %#v", m)
	}
	b := dialUDPAgent(t, g, "quic", false)
	for _, req := range []*protocol.Register{{Name: "game"}, {Name: "web", UDP: true}} {
		m := b.register(t, req)
		perr, ok := m.(*protocol.Error)
		if !ok || perr.Code != protocol.CodePortUnavailable {
			t.Errorf("register %s udp=%v: got %#v, want port_unavailable", req.Name, req.UDP, m)
		}
	}
	if r := b.registerUDP(t, "game"); r.Port != g.reg.route("game").port {
		t.Errorf("second agent of the UDP tunnel got port %d", r.Port)
	}
}

// A UDP tunnel's lease keeps its UDP port: for an agent that comes back,
// and across a restart through the lease file, whose record says udp.
func TestUDPLeaseKeepsPort(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	leases := filepath.Join(t.TempDir(), "leases.json")
	cfg := Config{Lease: time.Minute, LeaseFile: leases}
	g := startUDPGateway(t, cfg)
	a := dialUDPAgent(t, g, "tcp", false)
	port := a.registerUDP(t, "game").Port
	a.sess.Close()
	err := testutil.Poll(10*time.Second, func() error {
		if ts := g.Tunnels(); len(ts) != 1 || ts[0].State != StateLeased {
			return fmt.Errorf("tunnels %+v, want game leased", ts)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	b := dialUDPAgent(t, g, "quic", false)
	if got := b.registerUDP(t, "game").Port; got != port {
		t.Fatalf("agent back got port %d, want %d", got, port)
	}
	if got, err := exchange(visitor(t, "127.0.0.1", port), "back"); err != nil || got != "back" {
		t.Fatalf("got %q, %v", got, err)
	}
	g.Close()

	data, err := os.ReadFile(leases)
	if err != nil {
		t.Fatal(err)
	}
	var f leaseFile
	if err := json.Unmarshal(data, &f); err != nil || len(f.Leases) != 1 || !f.Leases[0].UDP || f.Leases[0].Port != port {
		t.Fatalf("lease file %s (%v): want game's UDP port %d", data, err, port)
	}
	g2 := startUDPGateway(t, cfg)
	if u := g2.port(t, "game"); u.pc.LocalAddr().(*net.UDPAddr).Port != port {
		t.Fatalf("restored lease bound %v, want UDP port %d", u.Addr(), port)
	}
	c := dialUDPAgent(t, g2, "tcp", false)
	if got := c.registerUDP(t, "game").Port; got != port {
		t.Fatalf("agent after the restart got port %d, want %d", got, port)
	}
	if got, err := exchange(visitor(t, "127.0.0.1", port), "restarted"); err != nil || got != "restarted" {
		t.Fatalf("got %q, %v", got, err)
	}
}

// A lease file written before UDP tunnels (no udp field) restores a TCP
// port.
func TestUDPOldLeaseFileStaysTCP(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	leases := filepath.Join(t.TempDir(), "leases.json")
	ports, err := testutil.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	writeLeases(t, leases, leaseRecord{Name: "old", Identity: "anonymous", Port: ports[0], Expires: time.Now().Add(time.Minute)})
	g := startUDPGateway(t, Config{LeaseFile: leases, PortMin: ports[0], PortMax: ports[0]})
	tn := g.reg.route("old")
	if tn == nil || tn.udp || tn.ln == nil {
		t.Fatalf("restored tunnel %+v, want a TCP port", tn)
	}
	if _, ok := tn.ln.(*udpPort); ok {
		t.Fatal("old lease restored as a UDP port")
	}
}

// A burst of datagrams from many source ports, to an agent that answers
// no status, makes at most UDPMaxFlows flows holding at most 8 datagrams
// each; every other datagram is dropped and counted; the flows go with
// the agent.
func TestUDPFloodIsBounded(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	const maxFlows, sources, each = 16, 64, 10
	g := startUDPGateway(t, Config{UDPMaxFlows: maxFlows, UDPMaxFlowsPerSource: maxFlows})
	a := dialUDPAgent(t, g, "tcp", true)
	reg := a.registerUDP(t, "flood")
	u := g.port(t, "flood")
	held := func() int {
		u.mu.Lock()
		defer u.mu.Unlock()
		n := 0
		for _, f := range u.flows {
			n += len(f.q)
		}
		return n
	}
	sent := 0
	for i := range sources {
		v := visitor(t, "127.0.0.1", reg.Port)
		for range each {
			if _, err := v.Write([]byte("datagram")); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		// Each datagram is held or dropped before the next source
		// sends: the socket's buffer never overflows.
		err := testutil.Poll(10*time.Second, func() error {
			if n := held() + g.obs.allDropped(); n != sent {
				return fmt.Errorf("after source %d: %d datagrams held or dropped, want %d", i, n, sent)
			}
			if n := u.flowCount(); n > maxFlows {
				return fmt.Errorf("%d flows, cap %d", n, maxFlows)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := u.flowCount(); n != maxFlows {
		t.Errorf("%d flows, want %d", n, maxFlows)
	}
	if n := held(); n != maxFlows*udpHeldMax {
		t.Errorf("%d datagrams held, want %d", n, maxFlows*udpHeldMax)
	}
	if n := g.obs.dropped(DropQueueFull); n != maxFlows*(each-udpHeldMax) {
		t.Errorf("%d dropped for a full queue, want %d", n, maxFlows*(each-udpHeldMax))
	}
	if n := g.obs.dropped(DropFlowLimit); n != (sources-maxFlows)*each {
		t.Errorf("%d dropped over the flow cap, want %d", n, (sources-maxFlows)*each)
	}
	if err := testutil.Poll(10*time.Second, func() error {
		if n := a.opened.Load(); n != maxFlows {
			return fmt.Errorf("agent saw %d flows, want %d", n, maxFlows)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The agent goes: its flows end, their held datagrams counted.
	a.sess.Close()
	err := testutil.Poll(10*time.Second, func() error {
		if n := u.flowCount(); n != 0 {
			return fmt.Errorf("%d flows left", n)
		}
		if n := g.obs.dropped(DropNoAgent); n != maxFlows*udpHeldMax {
			return fmt.Errorf("%d held datagrams dropped with the agent, want %d", n, maxFlows*udpHeldMax)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// With no agent online, datagrams are dropped and counted, and no flow
// is made.
func TestUDPNoAgent(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	g := startUDPGateway(t, Config{Lease: time.Minute})
	a := dialUDPAgent(t, g, "tcp", false)
	port := a.registerUDP(t, "away").Port
	a.sess.Close()
	if err := testutil.Poll(10*time.Second, func() error {
		if len(g.reg.route("away").live()) != 0 {
			return errors.New("agent still a member")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	v := visitor(t, "127.0.0.1", port)
	for range 5 {
		v.Write([]byte("anyone?"))
	}
	if err := testutil.Poll(10*time.Second, func() error {
		if n := g.obs.dropped(DropNoAgent); n != 5 {
			return fmt.Errorf("%d dropped for no agent, want 5", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n := g.port(t, "away").flowCount(); n != 0 {
		t.Errorf("%d flows with no agent", n)
	}
}

// testLink is a cluster's link between two gateways of a test: a TCP
// connection on loopback per forwarded visitor, served by the far
// gateway's ServeForwarded.
type testLink struct {
	far *Server
	ln  net.Listener
	mu  sync.Mutex // pairs each dial with its accept
	wg  sync.WaitGroup
}

func newTestLink(t *testing.T, far *Server) *testLink {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &testLink{far: far, ln: ln}
	t.Cleanup(func() {
		ln.Close()
		l.wg.Wait()
	})
	return l
}

func (l *testLink) OpenStream(ctx context.Context, node, name, visitor string) (net.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", l.ln.Addr().String())
	if err != nil {
		return nil, err
	}
	s, err := l.ln.Accept()
	if err != nil {
		c.Close()
		return nil, err
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		l.far.ServeForwarded(context.Background(), name, visitor, s)
	}()
	return c, nil
}

// freeUDPPort is a UDP port of loopback free a moment ago.
func freeUDPPort(t *testing.T) int {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().(*net.UDPAddr).Port
}

// In a cluster, a node none of whose agents serves a UDP tunnel opens
// its UDP port (the rules say udp) and sends each flow, in frames,
// through the link to a node that serves it.
func TestUDPThroughClusterLink(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	a := startUDPGateway(t, Config{})
	b := startUDPGateway(t, Config{})
	agent := dialUDPAgent(t, a, "quic", false)
	agent.registerUDP(t, "game")
	rules := a.reg.route("game").policy().encode()
	port := freeUDPPort(t)
	b.SetRemoteTunnels(newTestLink(t, a.Server), []RemoteTunnel{{Name: "game", Identity: "anonymous", Port: port, Nodes: []string{"a"}, Rules: rules}})
	g := b.port(t, "game")
	v1, v2 := visitor(t, "127.0.0.1", port), visitor(t, "127.0.0.1", port)
	for i := range 5 {
		for j, v := range []*net.UDPConn{v1, v2} {
			msg := fmt.Sprintf("visitor %d via node a %d", j, i)
			if got, err := exchange(v, msg); err != nil || got != msg {
				t.Fatalf("sent %q: got %q, %v", msg, got, err)
			}
		}
	}
	agent.mu.Lock()
	headers := slices.Clone(agent.headers)
	agent.mu.Unlock()
	for _, h := range headers {
		if !h.UDP || h.Flow != 0 {
			t.Errorf("flow through the link has header %+v, want frames (flow 0)", h)
		}
	}
	if len(headers) != 2 || g.flowCount() != 2 {
		t.Fatalf("agent saw %d flows, node b holds %d; want 2", len(headers), g.flowCount())
	}
	if _, ok := b.Tunnel("game"); ok {
		t.Error("the remote UDP tunnel has an HTTP route")
	}
	agent.sess.Close()
	err := testutil.Poll(10*time.Second, func() error {
		if n := strings.Count(b.access.String(), "node=a"); n != 2 {
			return fmt.Errorf("%d access log lines with node=a on node b, want 2:\n%s", n, b.access)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
