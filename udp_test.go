package diglett_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/internal/identity"
	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/quictransport"
	"github.com/diglett/diglett/internal/transport/tlsmux"
)

// udpWait bounds every wait of these tests.
const udpWait = 10 * time.Second

// udpPort is the public port the fake gateway gives every name.
const udpPort = 40123

// fakeGateway is the gateway's side of the protocol, made of the real
// transports: it logs agents in, registers their names, and opens UDP
// flows on their sessions the way the gateway does.
type fakeGateway struct {
	addr     string
	fp       string
	sessions chan *fakeSession // logged in and registered
}

// fakeSession is an agent's session on the fake gateway.
type fakeSession struct {
	sess transport.Session

	mu    sync.Mutex
	flows map[uint32]chan []byte // QUIC datagrams by flow
}

// startFakeGateway serves the agent port over via (diglett.TransportTCP
// or diglett.TransportQUIC) on loopback until the test ends; its hello
// lists features.
func startFakeGateway(t *testing.T, via string, features []string) *fakeGateway {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := identity.SelfSigned(key, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	fp, err := identity.Fingerprint(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{protocol.ALPN}, Certificates: []tls.Certificate{cert}}
	cfg := transport.Config{}.WithDefaults()
	g := &fakeGateway{fp: fp, sessions: make(chan *fakeSession, 8)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var live sync.Map // transport.Session -> struct{}: closed at the end
	var closeListener func() error
	serve := func(sess transport.Session) {
		live.Store(sess, struct{}{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer sess.Close()
			g.serve(ctx, sess, features)
		}()
	}
	switch via {
	case diglett.TransportTCP:
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		g.addr = ln.Addr().String()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				sess, err := tlsmux.Server(ctx, c, tc, cfg)
				if err == nil {
					serve(sess)
				}
			}
		}()
		closeListener = ln.Close
	case diglett.TransportQUIC:
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		g.addr = pc.LocalAddr().String()
		ln, err := quictransport.Listen(pc, tc, cfg, quictransport.ListenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				sess, err := ln.Accept(ctx)
				if err != nil {
					return
				}
				serve(sess)
			}
		}()
		closeListener = ln.Close
	default:
		t.Fatalf("transport %q", via)
	}
	t.Cleanup(func() {
		cancel()
		closeListener()
		live.Range(func(k, _ any) bool {
			k.(transport.Session).Close()
			return true
		})
		wg.Wait()
	})
	return g
}

// serve runs the control stream of sess: hello, login, registrations,
// then whatever the agent sends until it ends.
func (g *fakeGateway) serve(ctx context.Context, sess transport.Session, features []string) {
	ctrl, err := sess.AcceptStream(ctx)
	if err != nil {
		return
	}
	if _, err := protocol.ReadMessage(ctrl); err != nil {
		return
	}
	if protocol.WriteMessage(ctrl, &protocol.Hello{Version: protocol.Version, Software: "fake", Features: features}) != nil {
		return
	}
	if _, err := protocol.ReadMessage(ctrl); err != nil {
		return
	}
	if protocol.WriteMessage(ctrl, &protocol.LoginOK{Identity: "test"}) != nil {
		return
	}
	fs := &fakeSession{sess: sess, flows: make(map[uint32]chan []byte)}
	if ds, ok := sess.(transport.DatagramSession); ok {
		ds.HandleDatagrams(fs.deliver)
	}
	announced := false
	for {
		m, err := protocol.ReadMessage(ctrl)
		if err != nil {
			return
		}
		if r, ok := m.(*protocol.Register); ok {
			if protocol.WriteMessage(ctrl, &protocol.Registered{Name: r.Name, Port: udpPort}) != nil {
				return
			}
			if !announced {
				announced = true
				g.sessions <- fs
			}
		}
	}
}

// deliver hands a QUIC datagram from the agent to its flow.
func (fs *fakeSession) deliver(d []byte) {
	id, p, ok := protocol.ParseFlowDatagram(d)
	if !ok {
		return
	}
	fs.mu.Lock()
	ch := fs.flows[id]
	fs.mu.Unlock()
	if ch != nil {
		select {
		case ch <- p:
		default:
		}
	}
}

// session waits for the agent's session.
func (g *fakeGateway) session(t *testing.T) *fakeSession {
	t.Helper()
	select {
	case fs := <-g.sessions:
		return fs
	case <-time.After(udpWait):
		t.Fatal("no agent session")
		return nil
	}
}

// config is an agent's Config for g, over via.
func (g *fakeGateway) config(t *testing.T, via string) diglett.Config {
	return diglett.Config{
		Gateway:       g.addr,
		Transport:     via,
		Connections:   1,
		Name:          "game",
		UDP:           true,
		Fingerprint:   g.fp,
		KnownGateways: filepath.Join(t.TempDir(), "known_gateways"),
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// fakeFlow is a visitor's flow, as the gateway opens it.
type fakeFlow struct {
	fs  *fakeSession
	st  transport.Stream
	id  uint32 // 0: frames on the stream
	in  chan []byte
	buf []byte
}

// open opens a stream to the agent with header h and returns the flow and
// the agent's status. Over QUIC (a DatagramSession) h.Flow is used as
// given: 0 makes a flow in frames.
func (fs *fakeSession) open(t *testing.T, h protocol.StreamHeader) (*fakeFlow, protocol.Status) {
	t.Helper()
	f := fs.start(t, h)
	return f, f.status(t)
}

// start opens a stream to the agent with header h, not waiting for the
// status.
func (fs *fakeSession) start(t *testing.T, h protocol.StreamHeader) *fakeFlow {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), udpWait)
	defer cancel()
	st, err := fs.sess.OpenStream(ctx)
	if err != nil {
		t.Fatalf("open stream: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	f := &fakeFlow{fs: fs, st: st, id: h.Flow, buf: make([]byte, protocol.MaxDatagramSize)}
	if h.Flow != 0 {
		f.in = make(chan []byte, 256)
		fs.mu.Lock()
		fs.flows[h.Flow] = f.in
		fs.mu.Unlock()
	}
	b, err := protocol.AppendStreamHeader(nil, h)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write(b); err != nil {
		t.Fatalf("write header: %v", err)
	}
	return f
}

// status reads the agent's status for the flow.
func (f *fakeFlow) status(t *testing.T) protocol.Status {
	t.Helper()
	f.st.SetReadDeadline(time.Now().Add(udpWait))
	s, err := protocol.ReadStatus(f.st)
	if err != nil {
		t.Fatalf("read status: %v", err)
	}
	f.st.SetReadDeadline(time.Time{})
	return s
}

// openOK opens a UDP flow of name from visitor, in QUIC datagrams when
// flow is not 0, and fails the test unless the agent accepts it.
func (fs *fakeSession) openOK(t *testing.T, name, visitor string, flow uint32) *fakeFlow {
	t.Helper()
	f, s := fs.open(t, protocol.StreamHeader{Name: name, Visitor: visitor, UDP: true, Flow: flow})
	if s != protocol.StatusOK {
		t.Fatalf("flow from %s: status %v, want ok", visitor, s)
	}
	return f
}

func (f *fakeFlow) send(p []byte) error {
	if f.id == 0 {
		b, err := protocol.AppendDatagramFrame(nil, p)
		if err != nil {
			return err
		}
		_, err = f.st.Write(b)
		return err
	}
	return f.fs.sess.(transport.DatagramSession).SendDatagram(protocol.AppendFlowDatagram(nil, f.id, p))
}

// recv waits up to d for the flow's next datagram from the agent.
func (f *fakeFlow) recv(d time.Duration) ([]byte, error) {
	if f.id == 0 {
		f.st.SetReadDeadline(time.Now().Add(d))
		n, err := protocol.ReadDatagramFrame(f.st, f.buf)
		if err != nil {
			return nil, err
		}
		return bytes.Clone(f.buf[:n]), nil
	}
	select {
	case p := <-f.in:
		return p, nil
	case <-time.After(d):
		return nil, errors.New("no datagram in time")
	}
}

// ended waits for the agent to end the flow: its stream's EOF.
func (f *fakeFlow) ended(t *testing.T) {
	t.Helper()
	f.st.SetReadDeadline(time.Now().Add(udpWait))
	for {
		_, err := f.recvOnStream()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatalf("flow did not end cleanly: %v", err)
		}
	}
}

// recvOnStream reads what the stream carries: frames in frame mode,
// nothing else in datagram mode.
func (f *fakeFlow) recvOnStream() (int, error) {
	if f.id == 0 {
		return protocol.ReadDatagramFrame(f.st, f.buf)
	}
	n, err := f.st.Read(f.buf)
	if n > 0 {
		return n, fmt.Errorf("%d bytes on the stream of a flow in QUIC datagrams", n)
	}
	return n, err
}

// udpEcho runs a UDP echo server on loopback until the test ends.
func udpEcho(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc.(*net.UDPConn).SetReadBuffer(1 << 20)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	return pc.LocalAddr().String()
}

// listenUDP runs diglett.Listen for cfg until the test ends.
// udpAgent starts a fake gateway that serves UDP tunnels over via and a
// UDP listener logged in to it; it returns the listener and the gateway's
// side of its session.
func udpAgent(t *testing.T, via string) (*diglett.Listener, *fakeSession) {
	t.Helper()
	g := startFakeGateway(t, via, []string{protocol.FeatureUDP})
	ln := listenUDP(t, g.config(t, via))
	return ln, g.session(t)
}

func listenUDP(t *testing.T, cfg diglett.Config) *diglett.Listener {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), udpWait)
	defer cancel()
	ln, err := diglett.Listen(ctx, cfg)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// forwardUDP runs diglett.Forward on ln to backend until the test ends.
func forwardUDP(t *testing.T, ln *diglett.Listener, backend string, o diglett.ForwardOptions) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	o.DrainTimeout = -1
	done := make(chan error, 1)
	go func() { done <- diglett.Forward(ctx, ln, backend, o) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("forward: %v", err)
			}
		case <-time.After(udpWait):
			t.Error("forward did not return")
		}
	})
}

// udpModes are the two ways a flow travels: frames on a stream over
// TLS + multiplexer, QUIC datagrams over QUIC.
var udpModes = []struct {
	name string
	via  string
	flow func(i int) uint32 // the flow number of the gateway's i-th flow
}{
	{"frames", diglett.TransportTCP, func(int) uint32 { return 0 }},
	{"datagrams", diglett.TransportQUIC, func(i int) uint32 { return uint32(100 + i) }},
}

// TestUDPFlowsEcho sends datagrams of two visitors at once through the
// agent's forwarder to a real UDP echo server: each comes back whole, in
// order, on its own visitor's flow.
func TestUDPFlowsEcho(t *testing.T) {
	for _, m := range udpModes {
		t.Run(m.name, func(t *testing.T) {
			noLeaks(t)
			g := startFakeGateway(t, m.via, []string{protocol.FeatureUDP})
			ln := listenUDP(t, g.config(t, m.via))
			if a := ln.Addr(); a.Network() != "udp" {
				t.Errorf("Addr().Network() = %q, want udp", a.Network())
			}
			if urls := ln.Tunnels()[0].URLs(); len(urls) != 1 || urls[0] != fmt.Sprintf("udp://127.0.0.1:%d", udpPort) {
				t.Errorf("URLs() = %v, want [udp://127.0.0.1:%d]", urls, udpPort)
			}
			fs := g.session(t)
			forwardUDP(t, ln, udpEcho(t), diglett.ForwardOptions{})
			sizes := []int{0, 1, 17, 512, 1000}
			const rounds, burst = 10, 8
			var wg sync.WaitGroup
			for v := range 2 {
				f := fs.openOK(t, "game", fmt.Sprintf("198.51.100.%d:5000", v+1), m.flow(v))
				wg.Add(1)
				go func() {
					defer wg.Done()
					seq := 0
					for r := range rounds {
						var sent [][]byte
						for range burst {
							p := bytes.Repeat([]byte{byte('a' + v)}, sizes[seq%len(sizes)])
							if len(p) >= 4 {
								copy(p, fmt.Sprintf("%d%03d", v, seq%1000))
							}
							seq++
							if err := f.send(p); err != nil {
								t.Errorf("visitor %d: send: %v", v, err)
								return
							}
							sent = append(sent, p)
						}
						for i, want := range sent {
							got, err := f.recv(udpWait)
							if err != nil {
								t.Errorf("visitor %d round %d datagram %d: %v", v, r, i, err)
								return
							}
							if !bytes.Equal(got, want) {
								t.Errorf("visitor %d round %d datagram %d: got %d bytes %.12q, want %d bytes %.12q", v, r, i, len(got), got, len(want), want)
								return
							}
						}
					}
					if m.flow(0) != 0 {
						return
					}
					// Frames carry the largest UDP datagram, whole (one
					// at a time: the sockets' buffers hold few of them).
					big := bytes.Repeat([]byte{byte('a' + v)}, protocol.MaxDatagramSize)
					if err := f.send(big); err != nil {
						t.Errorf("visitor %d: send: %v", v, err)
						return
					}
					if got, err := f.recv(udpWait); err != nil || !bytes.Equal(got, big) {
						t.Errorf("visitor %d: largest datagram: got %d bytes, %v", v, len(got), err)
					}
				}()
			}
			wg.Wait()
		})
	}
}

// TestUDPIdleFlowEnds: a flow with no datagram either way for
// UDPIdleTimeout is ended by the agent.
func TestUDPIdleFlowEnds(t *testing.T) {
	for _, m := range udpModes {
		t.Run(m.name, func(t *testing.T) {
			noLeaks(t)
			ln, fs := udpAgent(t, m.via)
			const idle = 300 * time.Millisecond
			forwardUDP(t, ln, udpEcho(t), diglett.ForwardOptions{UDPIdleTimeout: idle})
			f := fs.openOK(t, "game", "198.51.100.1:5000", m.flow(0))
			// The agent's last datagram is the echo, somewhere between
			// the send and the receive: timed from the send, a flow
			// ended at its idle timeout is never measured short of it.
			sent := time.Now()
			if err := f.send([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			if _, err := f.recv(udpWait); err != nil {
				t.Fatal(err)
			}
			f.ended(t)
			if d := time.Since(sent); d < idle {
				t.Errorf("flow ended %v after its last datagram was sent, before the idle timeout %v", d, idle)
			}
		})
	}
}

// TestUDPFlowCap: above MaxUDPFlows open flows of a tunnel the agent
// answers StatusBusy; once one ends, a new one is served.
func TestUDPFlowCap(t *testing.T) {
	for _, m := range udpModes {
		t.Run(m.name, func(t *testing.T) {
			noLeaks(t)
			ln, fs := udpAgent(t, m.via)
			forwardUDP(t, ln, udpEcho(t), diglett.ForwardOptions{MaxUDPFlows: 2})
			var flows []*fakeFlow
			for i := range 2 {
				f := fs.openOK(t, "game", fmt.Sprintf("198.51.100.%d:5000", i+1), m.flow(i))
				if err := f.send([]byte("hello")); err != nil {
					t.Fatal(err)
				}
				if _, err := f.recv(udpWait); err != nil {
					t.Fatal(err)
				}
				flows = append(flows, f)
			}
			if _, s := fs.open(t, protocol.StreamHeader{Name: "game", Visitor: "198.51.100.3:5000", UDP: true, Flow: m.flow(2)}); s != protocol.StatusBusy {
				t.Fatalf("third flow: status %v, want %v", s, protocol.StatusBusy)
			}
			flows[0].st.Close() // the gateway ends a flow
			deadline := time.Now().Add(udpWait)
			for i := 3; ; i++ {
				_, s := fs.open(t, protocol.StreamHeader{Name: "game", Visitor: fmt.Sprintf("198.51.100.%d:5000", i+1), UDP: true, Flow: m.flow(i)})
				if s == protocol.StatusOK {
					break
				}
				if s != protocol.StatusBusy || time.Now().After(deadline) {
					t.Fatalf("flow after one ended: status %v", s)
				}
				time.Sleep(20 * time.Millisecond) // poll interval
			}
		})
	}
}

// TestUDPFlowsEndOnDrain: when Forward drains, a flow that carries no
// datagram ends on its own (within a second) instead of holding the drain
// to DrainTimeout.
func TestUDPFlowsEndOnDrain(t *testing.T) {
	for _, m := range udpModes {
		t.Run(m.name, func(t *testing.T) {
			noLeaks(t)
			ln, fs := udpAgent(t, m.via)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- diglett.Forward(ctx, ln, udpEcho(t), diglett.ForwardOptions{DrainTimeout: time.Hour}) }()
			f := fs.openOK(t, "game", "198.51.100.1:5000", m.flow(0))
			if err := f.send([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			if _, err := f.recv(udpWait); err != nil {
				t.Fatal(err)
			}
			cancel()
			// Forward returns once the flow ended (the session to the
			// gateway closes then, perhaps before the flow's end reaches
			// it).
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("forward: %v", err)
				}
			case <-time.After(udpWait):
				t.Fatal("forward still draining an idle UDP flow")
			}
		})
	}
}

// TestUDPGatewayWithoutFeature: a gateway whose hello does not list "udp"
// predates UDP tunnels; the agent refuses it with a fatal error.
func TestUDPGatewayWithoutFeature(t *testing.T) {
	noLeaks(t)
	g := startFakeGateway(t, diglett.TransportTCP, []string{protocol.FeatureNotice})
	ctx, cancel := context.WithTimeout(context.Background(), udpWait)
	defer cancel()
	ln, err := diglett.Listen(ctx, g.config(t, diglett.TransportTCP))
	if err == nil {
		ln.Close()
		t.Fatal("Listen succeeded with a gateway that does not serve UDP tunnels")
	}
	if !errors.Is(err, diglett.ErrUDPUnsupported) || !diglett.IsFatal(err) {
		t.Errorf("err = %v, want ErrUDPUnsupported, fatal", err)
	}
	if want := "does not serve UDP tunnels (it predates them): upgrade it"; !strings.Contains(err.Error(), want) {
		t.Errorf("err = %q, want it to say %q", err, want)
	}
}

// TestUDPConnMessages: a UDP Conn reads one datagram per Read, truncated
// to the buffer, honours read deadlines, and knows its addresses.
func TestUDPConnMessages(t *testing.T) {
	for _, m := range udpModes {
		t.Run(m.name, func(t *testing.T) {
			noLeaks(t)
			ln, fs := udpAgent(t, m.via)
			f := fs.start(t, protocol.StreamHeader{Name: "game", Visitor: "198.51.100.9:6000", UDP: true, Flow: m.flow(0)})
			c := accept(t, ln)
			if _, err := c.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			if s := f.status(t); s != protocol.StatusOK {
				t.Fatalf("status %v, want ok", s)
			}
			if got, err := f.recv(udpWait); err != nil || string(got) != "hello" {
				t.Fatalf("gateway got %q, %v; want hello", got, err)
			}
			if ra, ok := c.RemoteAddr().(*net.UDPAddr); !ok || ra.String() != "198.51.100.9:6000" {
				t.Errorf("RemoteAddr = %#v, want *net.UDPAddr 198.51.100.9:6000", c.RemoteAddr())
			}
			if n := c.LocalAddr().Network(); n != "udp" {
				t.Errorf("LocalAddr().Network() = %q, want udp", n)
			}
			for _, p := range []string{"first datagram", "second"} {
				if err := f.send([]byte(p)); err != nil {
					t.Fatal(err)
				}
			}
			c.SetReadDeadline(time.Now().Add(udpWait))
			buf := make([]byte, 5)
			for _, want := range []string{"first", "secon"} {
				n, err := c.Read(buf)
				if err != nil || string(buf[:n]) != want {
					t.Fatalf("Read = %q, %v; want %q", buf[:n], err, want)
				}
			}
			c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			var ne net.Error
			if _, err := c.Read(buf); !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("Read after the deadline: %v, want a timeout", err)
			}
			c.SetReadDeadline(time.Now().Add(udpWait))
			if err := f.send([]byte("third")); err != nil {
				t.Fatal(err)
			}
			if n, err := c.Read(buf); err != nil || string(buf[:n]) != "third" {
				t.Fatalf("Read after a timeout = %q, %v; want third", buf[:n], err)
			}
			if _, err := c.Write([]byte("reply")); err != nil {
				t.Fatal(err)
			}
			if got, err := f.recv(udpWait); err != nil || string(got) != "reply" {
				t.Fatalf("gateway got %q, %v; want reply", got, err)
			}
			if _, err := c.Write(make([]byte, protocol.MaxDatagramSize+1)); err == nil {
				t.Error("Write of a datagram above the UDP maximum succeeded")
			}
			f.st.Close() // the gateway ends the flow
			if _, err := c.Read(buf); err != io.EOF {
				t.Errorf("Read after the gateway ended the flow: %v, want EOF", err)
			}
			c.Close()
		})
	}
}

// TestUDPDatagramTooLargeForPath: over QUIC, a datagram that does not
// fit the path is dropped and counted, never sent on the stream.
func TestUDPDatagramTooLargeForPath(t *testing.T) {
	noLeaks(t)
	g := startFakeGateway(t, diglett.TransportQUIC, []string{protocol.FeatureUDP})
	ln := listenUDP(t, g.config(t, diglett.TransportQUIC))
	fs := g.session(t)
	f := fs.start(t, protocol.StreamHeader{Name: "game", Visitor: "198.51.100.9:6000", UDP: true, Flow: 7})
	c := accept(t, ln)
	if n, err := c.Write(make([]byte, 4000)); n != 4000 || err != nil {
		t.Fatalf("Write of a datagram too large for the path = %d, %v; want 4000, nil", n, err)
	}
	if d := c.Dropped(); d != 1 {
		t.Errorf("Dropped() = %d, want 1", d)
	}
	if _, err := c.Write([]byte("small")); err != nil {
		t.Fatal(err)
	}
	if s := f.status(t); s != protocol.StatusOK {
		t.Fatalf("status %v, want ok", s)
	}
	if got, err := f.recv(udpWait); err != nil || string(got) != "small" {
		t.Fatalf("gateway's first datagram %q, %v; want small", got, err)
	}
	f.st.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	var ne net.Error
	if n, err := f.st.Read(make([]byte, 8192)); n != 0 || !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("the flow's stream carried %d bytes (%v), want nothing", n, err)
	}
	c.Close()
	f.ended(t)
}

// TestUDPHeaderOfTheOtherKind: a UDP flow for a TCP tunnel, or a TCP
// visitor for a UDP tunnel, is answered as an unknown name.
func TestUDPHeaderOfTheOtherKind(t *testing.T) {
	for _, udp := range []bool{true, false} {
		t.Run(fmt.Sprintf("udp_tunnel=%t", udp), func(t *testing.T) {
			noLeaks(t)
			g := startFakeGateway(t, diglett.TransportTCP, []string{protocol.FeatureUDP})
			cfg := g.config(t, diglett.TransportTCP)
			cfg.UDP = udp
			listenUDP(t, cfg)
			fs := g.session(t)
			if _, s := fs.open(t, protocol.StreamHeader{Name: "game", Visitor: "198.51.100.1:5000", UDP: !udp}); s != protocol.StatusUnknownTunnel {
				t.Errorf("status %v, want %v", s, protocol.StatusUnknownTunnel)
			}
		})
	}
}

func TestUDPConfigValidate(t *testing.T) {
	for _, c := range []diglett.Config{
		{Gateway: "127.0.0.1:20000", Name: "game", UDP: true, BasicAuth: "u:p"},
		{Gateway: "127.0.0.1:20000", Name: "game", UDP: true, H2C: true},
	} {
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "UDP") {
			t.Errorf("Validate(%+v) = %v, want a UDP error", c, err)
		}
	}
}

// noLeaks checks, once everything else of the test has been cleaned up,
// that its goroutines have ended. Call it first.
func noLeaks(t *testing.T) {
	t.Helper()
	baseline := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, baseline) })
}

// accept waits for the listener's next visitor.
func accept(t *testing.T, ln *diglett.Listener) *diglett.Conn {
	t.Helper()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("accept: %v", r.err)
		}
		c := r.c.(*diglett.Conn)
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(udpWait):
		t.Fatal("no visitor accepted")
		return nil
	}
}
