package gateway

import (
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/diglett/diglett/internal/source"
)

// Agent connections in their handshake (TLS, hello and login; for QUIC,
// from quic-go's Accept to the login) hold a slot each. Slots are counted
// per source address, so that one client cannot take them all:
//
//   - a source (an IPv4 address, an IPv6 /64) holds at most
//     Config.MaxHandshakesPerSource slots; its further connections are
//     refused;
//   - when all Config.MaxHandshakes slots are taken, a connection from a
//     source that holds at least two fewer than the largest holder takes
//     the slot of that holder's oldest handshake, which is cut off (shed);
//     otherwise it is refused. Under a flood from one source or a few,
//     everyone else still gets in; only a flood from as many sources as
//     there are slots refuses newcomers, and then every source keeps its
//     share.
//
// A refused TCP connection gets a TLS alert (busyAlert) before it is
// closed, a refused QUIC or WebSocket session is closed with
// transport.CodeBusy: the agent reports "gateway busy" and retries.
// Refusals are counted (HandshakeStats) and logged at Warn, at most one
// line per source.Interval.

// Reasons a handshake is refused or cut off, as the summary logs them.
const (
	reasonPerSource   = "refused_per_source"
	reasonGatewayFull = "refused_gateway_full"
	reasonShed        = "shed"
)

// busyAlert is a TLS record holding a fatal user_canceled alert (record
// type 21, version 3.3, length 2; level 2, alert 90): what a TCP
// connection refused before its handshake reads, so that an agent tells
// "gateway busy" from a network failure. TLS clients report it as an error
// at once ("remote error: tls: user canceled").
var busyAlert = []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x5a}

// busyReason is the reason QUIC and WebSocket sessions refused for want of
// a handshake slot are closed with, with transport.CodeBusy.
const busyReason = "gateway busy"

// refuseBusy answers a TCP connection refused before its TLS handshake
// with busyAlert and closes it. The socket is new: its send buffer takes
// the few bytes at once.
func refuseBusy(c net.Conn) {
	c.SetWriteDeadline(time.Now().Add(time.Second))
	c.Write(busyAlert)
	c.Close()
}

// HandshakeStats counts the agent connections in their handshake, and
// those refused or cut off there since the server started.
type HandshakeStats struct {
	InProgress int // connections in their handshake now
	Sources    int // sources they come from

	RefusedPerSource  uint64 // refused: their source held MaxHandshakesPerSource
	RefusedFull       uint64 // refused: every slot was taken, by sources holding no more
	Shed              uint64 // cut off for a newcomer from a source holding fewer
	FirstByteTimeouts uint64 // TCP connections that sent nothing within FirstByteTimeout
}

// HandshakeStats reports the handshake counters.
func (s *Server) HandshakeStats() HandshakeStats {
	return s.hs.stats()
}

// handshakes is the accounting of handshake slots.
type handshakes struct {
	max, perSource int
	summary        *source.Summary

	mu      sync.Mutex
	total   int
	sources map[netip.Prefix]*hsSource

	refusedPerSource, refusedFull, shed, silent atomic.Uint64
}

// hsSource is one source's slots, oldest first.
type hsSource struct {
	key   netip.Prefix
	slots []*hsSlot
}

// hsSlot is one connection's handshake slot.
type hsSlot struct {
	h *handshakes

	// Guarded by h.mu.
	src     *hsSource // nil once released or shed
	onShedF func()
	wasShed bool
}

func newHandshakes(max, perSource int, log *slog.Logger) *handshakes {
	return &handshakes{
		max:       max,
		perSource: perSource,
		summary: source.NewSummary(log, "agent connections refused: too many in their handshake", source.Interval,
			reasonPerSource, reasonGatewayFull, reasonShed),
		sources: make(map[netip.Prefix]*hsSource),
	}
}

// acquire takes a slot for a connection from key, shedding the oldest
// handshake of the largest holder if the gateway is full and key holds at
// least two fewer; nil if the connection is refused (counted and logged).
func (h *handshakes) acquire(key netip.Prefix) *hsSlot {
	h.mu.Lock()
	src := h.sources[key]
	n := 0
	if src != nil {
		n = len(src.slots)
	}
	if n >= h.perSource {
		h.mu.Unlock()
		h.refusedPerSource.Add(1)
		h.summary.Add(reasonPerSource, key)
		return nil
	}
	var victim *hsSlot
	var victimKey netip.Prefix
	if h.total >= h.max {
		big := h.largestLocked()
		if big == nil || len(big.slots) <= n+1 {
			h.mu.Unlock()
			h.refusedFull.Add(1)
			h.summary.Add(reasonGatewayFull, key)
			return nil
		}
		victim, victimKey = big.slots[0], big.key
		h.removeLocked(victim)
		victim.wasShed = true
	}
	if src == nil {
		src = &hsSource{key: key}
		h.sources[key] = src
	}
	sl := &hsSlot{h: h, src: src}
	src.slots = append(src.slots, sl)
	h.total++
	var shed func()
	if victim != nil {
		shed, victim.onShedF = victim.onShedF, nil
	}
	h.mu.Unlock()
	if victim != nil {
		h.shed.Add(1)
		h.summary.Add(reasonShed, victimKey)
		if shed != nil {
			shed()
		}
	}
	return sl
}

// largestLocked is the source holding the most slots.
func (h *handshakes) largestLocked() *hsSource {
	var big *hsSource
	for _, src := range h.sources {
		if big == nil || len(src.slots) > len(big.slots) {
			big = src
		}
	}
	return big
}

// removeLocked gives back sl's slot.
func (h *handshakes) removeLocked(sl *hsSlot) {
	src := sl.src
	if src == nil {
		return
	}
	sl.src = nil
	if i := slices.Index(src.slots, sl); i >= 0 {
		src.slots = slices.Delete(src.slots, i, i+1)
	}
	if len(src.slots) == 0 {
		delete(h.sources, src.key)
	}
	h.total--
}

// onShed sets what shedding the slot does: it must cut the handshake off
// without blocking (close the socket, cancel a context). If the slot was
// shed already, f runs at once.
func (sl *hsSlot) onShed(f func()) {
	sl.h.mu.Lock()
	if sl.wasShed {
		sl.h.mu.Unlock()
		f()
		return
	}
	sl.onShedF = f
	sl.h.mu.Unlock()
}

// release gives the slot back; it may be called more than once.
func (sl *hsSlot) release() {
	sl.h.mu.Lock()
	sl.h.removeLocked(sl)
	sl.onShedF = nil
	sl.h.mu.Unlock()
}

func (h *handshakes) stats() HandshakeStats {
	h.mu.Lock()
	st := HandshakeStats{InProgress: h.total, Sources: len(h.sources)}
	h.mu.Unlock()
	st.RefusedPerSource = h.refusedPerSource.Load()
	st.RefusedFull = h.refusedFull.Load()
	st.Shed = h.shed.Load()
	st.FirstByteTimeouts = h.silent.Load()
	return st
}

// firstByteConn is a new TCP connection that must send its first byte
// (the TLS ClientHello's) within a short deadline; once it has, the
// deadline is lifted and the handshake's own bound applies. It stays under
// the TLS connection for the session's life, at the cost of one atomic
// load per read.
type firstByteConn struct {
	net.Conn
	arrived atomic.Bool
}

func newFirstByteConn(c net.Conn, d time.Duration) *firstByteConn {
	c.SetReadDeadline(time.Now().Add(d))
	return &firstByteConn{Conn: c}
}

func (c *firstByteConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.arrived.Load() {
		c.arrived.Store(true)
		c.Conn.SetReadDeadline(time.Time{})
	}
	return n, err
}
