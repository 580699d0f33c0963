package ingress

// The cap on HTTP requests in flight per visitor source.

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/diglett/diglett/internal/source"
)

// sourceLimiter caps the HTTP requests in flight per source: an IPv4
// address, or an IPv6 /64 (what one subscriber usually has). Its memory is
// bounded by the requests in flight: a source's entry goes when its count
// returns to zero. Refusals are summed up in at most one Warn line per
// source.Interval, naming the sources refused most, however many sources a
// flood comes from.
type sourceLimiter struct {
	max     int
	refused atomic.Uint64
	summary *source.Summary

	mu       sync.Mutex
	inflight map[netip.Prefix]int
}

// reasonInFlight counts the requests refused by sourceLimiter.
const reasonInFlight = "refused"

func newSourceLimiter(max int, log *slog.Logger, every time.Duration) *sourceLimiter {
	return &sourceLimiter{
		max:      max,
		inflight: make(map[netip.Prefix]int),
		summary: source.NewSummary(log, fmt.Sprintf("HTTP requests refused: more than %d in flight from one source", max),
			every, reasonInFlight),
	}
}

// requestSource is the source a visitor's address counts against.
func requestSource(ip netip.Addr) netip.Prefix { return source.Of(ip) }

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
		l.summary.Add(reasonInFlight, src)
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
