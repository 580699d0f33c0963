package e2e

import (
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diglett/diglett"
)

// udpSwitch forwards the datagrams of clients to a target that can be
// switched, as if the gateway at one address had been replaced by another
// process that never heard of the clients' sessions.
type udpSwitch struct {
	front  *net.UDPConn
	target atomic.Pointer[net.UDPAddr]

	mu    sync.Mutex
	backs map[string]*net.UDPConn // by client address, to the current target
	wg    sync.WaitGroup
}

func newUDPSwitch(t *testing.T, target string) *udpSwitch {
	t.Helper()
	front, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := &udpSwitch{front: front, backs: make(map[string]*net.UDPConn)}
	s.switchTo(t, target)
	s.wg.Add(1)
	go s.forward()
	t.Cleanup(func() {
		front.Close()
		s.mu.Lock()
		for _, b := range s.backs {
			b.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *udpSwitch) Addr() string { return s.front.LocalAddr().String() }

// switchTo sends the clients' next datagrams to target, from new sockets:
// the previous target's answers are dropped.
func (s *udpSwitch) switchTo(t *testing.T, target string) {
	addr, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.target.Store(addr)
	for c, b := range s.backs {
		b.Close()
		delete(s.backs, c)
	}
}

func (s *udpSwitch) forward() {
	defer s.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, client, err := s.front.ReadFromUDP(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		if b := s.back(client); b != nil {
			b.Write(buf[:n])
		}
	}
}

// back is the socket to the target for client, made on its first datagram.
func (s *udpSwitch) back(client *net.UDPAddr) *net.UDPConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.backs[client.String()]; ok {
		return b
	}
	b, err := net.DialUDP("udp", nil, s.target.Load())
	if err != nil {
		return nil
	}
	s.backs[client.String()] = b
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 64<<10)
		for {
			n, err := b.Read(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err == nil {
				s.front.WriteToUDP(buf[:n], client)
			}
		}
	}()
	return b
}

// TestQUICGatewayRestart replaces the gateway an agent reaches over QUIC by
// another with the same key (a restart, to the agent): the new gateway
// answers the agent's next packet with a stateless reset, derived from
// their common key, and the agent reconnects at once instead of waiting
// for its idle timeout.
func TestQUICGatewayRestart(t *testing.T) {
	parallel(t)
	key := newKey(t)
	before := startGateway(t, gatewayOptions{Key: key})
	after := startGateway(t, gatewayOptions{Key: key})
	sw := newUDPSwitch(t, before.Addr)

	log, logs := newLogger(t, "agent")
	cfg := agentConfig(t, before, "restarted")
	cfg.Gateway = sw.Addr()
	cfg.Fingerprint = before.Fingerprint
	cfg.Transport = diglett.TransportQUIC
	cfg.Logger = log
	// A long idle timeout on the agent's side: only a reset ends its
	// session early. (The negotiated one is the gateway's, testKeepAlive.)
	cfg.MaxIdleTimeout = 30 * time.Second
	cfg.KeepAlivePeriod = 500 * time.Millisecond
	ln := mustListen(t, cfg)
	forward(t, ln, startEcho(t))
	waitFor(t, "old gateway log", before.Logs, "agent logged in")
	// The session settles: the handshake's packets and path MTU
	// discovery's large probes are over; only keepalives go.
	time.Sleep(4 * cfg.KeepAlivePeriod)

	sw.switchTo(t, after.Addr)
	switched := time.Now()
	waitFor(t, "agent log", logs, "disconnected from gateway")
	took := time.Since(switched)
	t.Logf("the agent noticed the restart after %v", took)
	if !strings.Contains(logs.String(), "stateless reset") {
		t.Errorf("the agent's session did not end with a stateless reset")
	}
	// Its next probe goes within a keepalive period; its idle timeout
	// (the gateway's testKeepAlive at the least) is far longer.
	if took > testKeepAlive/3 {
		t.Errorf("the agent noticed the restart after %v, want about one keepalive period (%v)", took, cfg.KeepAlivePeriod)
	}
	waitFor(t, "new gateway log", after.Logs, "agent logged in")
}
