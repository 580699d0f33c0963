package gateway

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Defaults for the visitor limits.
const (
	DefaultHalfCloseTimeout     = 60 * time.Second
	DefaultMaxVisitors          = 65536
	DefaultMaxVisitorsPerTunnel = 16384
)

// refusalLogInterval is how often at most a refused visitor is logged at
// Warn; the refusals in between are counted in the next line.
const refusalLogInterval = 10 * time.Second

// visitorLimits caps the visitor connections held at once: MaxVisitors
// for the whole gateway (TCP-port visitors and HTTP(S) connections) and
// MaxVisitorsPerTunnel for each tunnel (its TCP-port visitors and its HTTP
// requests in flight). A visitor beyond a cap is refused at once, counted,
// and logged at Warn, one line per refusalLogInterval at most.
type visitorLimits struct {
	max, perTunnel int64
	log            *slog.Logger

	held atomic.Int64 // gateway-wide

	mu      sync.Mutex
	tunnels map[*tunnel]int64 // held per tunnel; no entry at zero

	refusedGateway, refusedTunnel atomic.Uint64

	warnMu     sync.Mutex
	warnNext   time.Time // when the next Warn line may be logged
	suppressed uint64    // refusals not logged since the last line
}

func newVisitorLimits(c Config) *visitorLimits {
	return &visitorLimits{
		max:       int64(c.MaxVisitors),
		perTunnel: int64(c.MaxVisitorsPerTunnel),
		log:       c.Logger,
		tunnels:   make(map[*tunnel]int64),
	}
}

// acquireGateway takes a slot of the gateway-wide cap; false when none is
// left (the refusal is then counted and logged).
func (l *visitorLimits) acquireGateway(visitor net.Addr) bool {
	if l.held.Add(1) > l.max {
		l.held.Add(-1)
		l.refusedGateway.Add(1)
		l.warn("gateway", l.max, "", visitor)
		return false
	}
	return true
}

func (l *visitorLimits) releaseGateway() { l.held.Add(-1) }

// acquireTunnel takes a slot of t's cap; false when none is left (the
// refusal is then counted and logged).
func (l *visitorLimits) acquireTunnel(t *tunnel, visitor net.Addr) bool {
	l.mu.Lock()
	n := l.tunnels[t]
	ok := n < l.perTunnel
	if ok {
		l.tunnels[t] = n + 1
	}
	l.mu.Unlock()
	if !ok {
		l.refusedTunnel.Add(1)
		l.warn("tunnel", l.perTunnel, t.name, visitor)
	}
	return ok
}

func (l *visitorLimits) releaseTunnel(t *tunnel) {
	l.mu.Lock()
	if n := l.tunnels[t] - 1; n > 0 {
		l.tunnels[t] = n
	} else {
		delete(l.tunnels, t)
	}
	l.mu.Unlock()
}

// acquireTCP takes the slots of a TCP-port visitor of t: the gateway's
// and the tunnel's. It returns their release, or nil when a cap is
// reached.
func (l *visitorLimits) acquireTCP(t *tunnel, visitor net.Addr) (release func()) {
	if !l.acquireGateway(visitor) {
		return nil
	}
	if !l.acquireTunnel(t, visitor) {
		l.releaseGateway()
		return nil
	}
	return func() {
		l.releaseTunnel(t)
		l.releaseGateway()
	}
}

// warn logs a refusal, or counts it for the next line when one was logged
// less than refusalLogInterval ago.
func (l *visitorLimits) warn(limit string, max int64, tunnel string, visitor net.Addr) {
	now := time.Now()
	l.warnMu.Lock()
	if now.Before(l.warnNext) {
		l.suppressed++
		l.warnMu.Unlock()
		return
	}
	suppressed := l.suppressed
	l.suppressed = 0
	l.warnNext = now.Add(refusalLogInterval)
	l.warnMu.Unlock()
	attrs := []any{"limit", limit, "max", max}
	if tunnel != "" {
		attrs = append(attrs, "tunnel", tunnel)
	}
	if visitor != nil {
		attrs = append(attrs, "visitor", visitor.String())
	}
	attrs = append(attrs, "suppressed", suppressed)
	l.log.Warn("visitor refused: too many visitors", attrs...)
}

// visitorStats is a snapshot of the visitor limits.
type visitorStats struct {
	Held           int64  // visitor connections held, gateway-wide
	RefusedGateway uint64 // visitors refused for MaxVisitors
	RefusedTunnel  uint64 // visitors refused for MaxVisitorsPerTunnel
}

// visitorStats reports the visitor connections held and the refusals so
// far (for the metrics endpoint): TCP-port visitors and HTTP(S)
// connections refused at accept for MaxVisitors, TCP-port visitors and
// HTTP requests refused for MaxVisitorsPerTunnel.
func (s *Server) visitorStats() visitorStats {
	return visitorStats{
		Held:           s.limits.held.Load(),
		RefusedGateway: s.limits.refusedGateway.Load(),
		RefusedTunnel:  s.limits.refusedTunnel.Load(),
	}
}

// limitListener holds a slot of the gateway-wide visitor cap for each
// connection it accepts, until the connection is closed; beyond the cap it
// resets connections at accept.
type limitListener struct {
	net.Listener
	l *visitorLimits
}

// LimitVisitors wraps an HTTP(S) ingress listener in the gateway-wide
// visitor cap (Config.MaxVisitors): each connection it accepts holds a
// slot until it is closed; beyond the cap connections are reset at
// accept, counted and logged.
func (s *Server) LimitVisitors(ln net.Listener) net.Listener {
	return &limitListener{Listener: ln, l: s.limits}
}

func (ln *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := ln.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if ln.l.acquireGateway(c.RemoteAddr()) {
			return &limitedConn{Conn: c, l: ln.l}, nil
		}
		reset(c)
	}
}

// limitedConn gives back its slot of the visitor cap when closed.
type limitedConn struct {
	net.Conn
	l    *visitorLimits
	once sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.l.releaseGateway)
	return err
}

// SyscallConn gives the raw socket of a TCP connection, for writes that
// must not wait (the ingress writes small responses from its receive
// loop) and for reads inside the socket's readiness callback (the ingress
// reads a plain visitor's requests there); other connections have none.
// A connection that read ahead of its user must not offer its socket.
func (c *limitedConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.ErrUnsupported
}

// CloseWrite half-closes the connection, as the HTTP server does before
// closing one it refused.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
