package ingress

// The cap on HTTP requests in flight per visitor source.

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// sourceLimiter caps the HTTP requests in flight per source: an IPv4
// address, or an IPv6 /64 (what one subscriber usually has). Its memory is
// bounded by the requests in flight: a source's entry goes when its count
// returns to zero. Refusals are summed up in at most one Warn line per
// warnInterval, naming the sources refused most, however many sources a
// flood comes from.
type sourceLimiter struct {
	max     int
	refused atomic.Uint64
	summary *warnSummary

	mu       sync.Mutex
	inflight map[netip.Prefix]int
}

// reasonInFlight counts the requests refused by sourceLimiter.
const reasonInFlight = "refused"

func newSourceLimiter(max int, log *slog.Logger, every time.Duration) *sourceLimiter {
	return &sourceLimiter{
		max:      max,
		inflight: make(map[netip.Prefix]int),
		summary: newWarnSummary(log, fmt.Sprintf("HTTP requests refused: more than %d in flight from one source", max),
			every, reasonInFlight),
	}
}

// requestSource is the source a visitor's address counts against.
func requestSource(ip netip.Addr) netip.Prefix { return ipSource(ip) }

// acquire takes a slot of src; false when src has max requests in flight
// (the refusal is counted and logged).
func (l *sourceLimiter) acquire(src netip.Prefix) bool {
	l.mu.Lock()
	ok := l.inflight[src] < l.max
	if ok {
		l.inflight[src]++
	}
	l.mu.Unlock()
	if !ok {
		l.refused.Add(1)
		l.summary.add(reasonInFlight, src)
	}
	return ok
}

// release gives back a slot taken by acquire.
func (l *sourceLimiter) release(src netip.Prefix) {
	l.mu.Lock()
	if n := l.inflight[src] - 1; n > 0 {
		l.inflight[src] = n
	} else {
		delete(l.inflight, src)
	}
	l.mu.Unlock()
}

// SourceRefusals is how many visitor requests the ingress has answered
// 429 Too Many Requests because their source already had
// Config.MaxRequestsPerSource requests in flight.
func (in *Server) SourceRefusals() uint64 {
	return in.sources.refused.Load()
}

// ipSource is the source an IP address counts against: the address itself
// (IPv4), or its /64 (IPv6), as for the gateway's per-source limits. The
// zero Addr gives the zero Prefix: one shared source.
func ipSource(ip netip.Addr) netip.Prefix {
	ip = ip.Unmap().WithZone("")
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

// sourceName is a source as logged: an IPv4 address, or an IPv6 prefix.
func sourceName(p netip.Prefix) string {
	switch {
	case !p.IsValid():
		return "unknown"
	case p.Addr().Is4():
		return p.Addr().String()
	}
	return p.String()
}
