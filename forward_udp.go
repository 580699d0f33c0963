package diglett

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/diglett/diglett/internal/protocol"
)

// Defaults of ForwardOptions for UDP tunnels.
const (
	DefaultUDPIdleTimeout = 60 * time.Second
	DefaultMaxUDPFlows    = 1024
)

// errUDPIdle ends a flow that carried no datagram for UDPIdleTimeout.
var errUDPIdle = errors.New("idle")

// udpDrainIdle is the idle timeout of UDP flows once Forward drains: a
// flow has no end of its own, so one whose exchange is over (a DNS
// answer, a handshake) ends after this rather than holding the drain up
// to DrainTimeout; one still busy goes on until then.
const udpDrainIdle = time.Second

// runUDP serves p's visitor, a UDP flow: it dials a UDP socket of the
// flow's own to the backend (so the backend's replies go to this visitor
// alone), accepts the flow, and relays datagram by datagram both ways
// until the flow is idle for UDPIdleTimeout, either side ends, or the
// pair is aborted. Above MaxUDPFlows flows of the tunnel the flow is
// refused (StatusBusy). Inspect and the PROXY protocol do not apply to
// UDP flows.
func (f *forwarder) runUDP(p *relayPair, l *slog.Logger) {
	vc := p.vc
	limit := f.o.MaxUDPFlows
	if limit <= 0 {
		limit = DefaultMaxUDPFlows
	}
	if !f.flows.acquire(vc.Name(), limit) {
		l.Debug("UDP flow refused: the tunnel has as many flows as allowed", "max_udp_flows", limit)
		vc.refuse(protocol.StatusBusy)
		return
	}
	defer f.flows.release(vc.Name())
	bc, backend, err := f.dialUDP(p.ctx, vc.Name())
	if err != nil {
		if p.ctx.Err() == nil {
			l.Warn("could not open a UDP socket to the backend", "backend", backend, "err", err)
		}
		vc.Abort(err)
		return
	}
	if !p.setBackend(bc) {
		bc.Close()
		return
	}
	if err := vc.sendStatus(protocol.StatusOK); err != nil {
		bc.Close()
		vc.Reset()
		return
	}
	l.Debug("UDP flow opened", "backend", backend)
	up, down, err := relayDatagrams(f.drain, vc, bc, orDefault(f.o.UDPIdleTimeout, DefaultUDPIdleTimeout))
	l.Debug("UDP flow ended", "sent", up, "received", down, "dropped", vc.Dropped(), "why", err)
}

// dialUDP is dial for a UDP flow: Dial when set (it must return a
// connected UDP socket, or a net.Conn that keeps datagram boundaries),
// otherwise a UDP socket connected to Backends[tunnel] or backend.
func (f *forwarder) dialUDP(ctx context.Context, tunnel string) (net.Conn, string, error) {
	if f.o.Dial != nil {
		return f.dial(ctx, tunnel)
	}
	addr := f.backend
	if a, ok := f.o.Backends[tunnel]; ok {
		addr = a
	}
	if addr == "" {
		return nil, addr, errNoBackend
	}
	c, err := f.d.DialContext(ctx, "udp", addr)
	return c, addr, err
}

// relayDatagrams copies datagrams between vc, a UDP flow, and bc, its
// backend's socket, one Read to one Write, until one side fails or no
// datagram went either way for idle (0: no bound; udpDrainIdle at most
// once drain ends). It closes both and returns the datagrams relayed
// each way and why the flow ended.
func relayDatagrams(drain context.Context, vc, bc net.Conn, idle time.Duration) (up, down int64, err error) {
	s := &datagramRelay{idle: idle}
	s.last.Store(time.Now().UnixNano())
	stop := context.AfterFunc(drain, func() {
		s.draining.Store(true)
		// Wake both reads: they take the shorter idle timeout.
		vc.SetReadDeadline(time.Now())
		bc.SetReadDeadline(time.Now())
	})
	defer stop()
	var upErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		up, upErr = s.pump(bc, vc, datagramReader(vc))
		vc.Close()
		bc.Close()
	}()
	down, err = s.pump(vc, bc, datagramReader(bc))
	vc.Close()
	bc.Close()
	wg.Wait()
	// The side that ended first says why; the other then fails on the
	// closed connection.
	if errors.Is(err, net.ErrClosed) || errors.Is(upErr, errUDPIdle) {
		err = upErr
	}
	return up, down, err
}

// datagramRelay is what both directions of a flow's relay share.
type datagramRelay struct {
	idle     time.Duration
	last     atomic.Int64 // the latest datagram either way, Unix nanoseconds
	draining atomic.Bool
}

// limit is the flow's idle timeout now (0: none), and whether it is the
// draining one.
func (s *datagramRelay) limit() (time.Duration, bool) {
	if s.draining.Load() {
		if s.idle > 0 {
			return min(s.idle, udpDrainIdle), true
		}
		return udpDrainIdle, true
	}
	return s.idle, false
}

// datagramReader reads src's datagrams one by one: a flow's own without
// a copy (its frame buffer fits its datagrams, and QUIC's come in their
// own), anything else through a buffer of the largest datagram's size,
// which a backend's UDP socket needs, as a reply may be that large.
func datagramReader(src net.Conn) func() ([]byte, error) {
	if c, ok := src.(*Conn); ok && c.udp != nil {
		return c.nextDatagram
	}
	buf := make([]byte, protocol.MaxDatagramSize)
	return func() ([]byte, error) {
		n, err := src.Read(buf)
		return buf[:n], err
	}
}

// pump writes each datagram read from src (by read) to dst until an error
// or the idle timeout without a datagram either way. It returns how many
// it relayed.
func (s *datagramRelay) pump(dst, src net.Conn, read func() ([]byte, error)) (int64, error) {
	var n int64
	for {
		limit, draining := s.limit()
		if limit > 0 {
			src.SetReadDeadline(time.Unix(0, s.last.Load()).Add(limit))
		}
		if !draining && s.draining.Load() {
			continue // the drain began after limit: its wake-up may be overwritten
		}
		d, err := read()
		if err != nil {
			if isTimeout(err) {
				if limit, _ := s.limit(); limit > 0 && time.Since(time.Unix(0, s.last.Load())) >= limit {
					return n, errUDPIdle
				}
				continue // a datagram the other way meanwhile, or the drain's wake-up
			}
			return n, err
		}
		s.last.Store(time.Now().UnixNano())
		if _, err := dst.Write(d); err != nil {
			return n, err
		}
		n++
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// flowCounts counts the open UDP flows of each tunnel.
type flowCounts struct {
	mu sync.Mutex
	n  map[string]int
}

// acquire counts a flow of tunnel; false when it has limit already.
func (c *flowCounts) acquire(tunnel string, limit int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[tunnel] >= limit {
		return false
	}
	if c.n == nil {
		c.n = make(map[string]int)
	}
	c.n[tunnel]++
	return true
}

func (c *flowCounts) release(tunnel string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[tunnel]--; c.n[tunnel] <= 0 {
		delete(c.n, tunnel)
	}
}
