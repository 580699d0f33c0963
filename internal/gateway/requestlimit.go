package gateway

import (
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultMaxRequestsPerSource is the default Config.MaxRequestsPerSource.
const DefaultMaxRequestsPerSource = 512

// refusalLogEvery is how often the refusals of one source are logged.
const refusalLogEvery = 10 * time.Second

// sourceLimiter caps the HTTP requests in flight per source: an IPv4
// address, or an IPv6 /64 (what one subscriber usually has). Its memory is
// bounded by the requests in flight: a source's entry goes when its count
// returns to zero. Refusals are logged at most once per source every
// refusalLogEvery, saying how many were not logged since; that
// bookkeeping holds only the sources logged in the last refusalLogEvery.
type sourceLimiter struct {
	max     int
	log     *slog.Logger
	now     func() time.Time
	refused atomic.Uint64

	mu       sync.Mutex
	inflight map[netip.Prefix]int
	logged   map[netip.Prefix]*refusalLog
	pruned   time.Time // when logged was last swept
}

// refusalLog is when a source's refusals were last logged and how many
// have not been since.
type refusalLog struct {
	at         time.Time
	suppressed int
}

func newSourceLimiter(max int, log *slog.Logger) *sourceLimiter {
	return &sourceLimiter{
		max:      max,
		log:      log,
		now:      time.Now,
		inflight: make(map[netip.Prefix]int),
		logged:   make(map[netip.Prefix]*refusalLog),
	}
}

// requestSource is the source a visitor's address counts against.
func requestSource(ip netip.Addr) netip.Prefix { return ipSource(ip) }

// acquire takes a slot of src; false when src has max requests in flight
// (the refusal is counted and logged).
func (l *sourceLimiter) acquire(src netip.Prefix) bool {
	l.mu.Lock()
	if l.inflight[src] < l.max {
		l.inflight[src]++
		l.mu.Unlock()
		return true
	}
	l.refused.Add(1)
	now := l.now()
	prev := l.logged[src]
	if prev != nil && now.Sub(prev.at) < refusalLogEvery {
		prev.suppressed++
		l.mu.Unlock()
		return false
	}
	if now.Sub(l.pruned) >= time.Second {
		l.pruned = now
		for k, e := range l.logged {
			if now.Sub(e.at) >= refusalLogEvery {
				delete(l.logged, k)
			}
		}
	}
	suppressed := 0
	if prev != nil {
		suppressed = prev.suppressed
	}
	l.logged[src] = &refusalLog{at: now}
	l.mu.Unlock()
	l.log.Warn("HTTP requests refused: too many requests in flight from one source",
		"source", sourceName(src), "limit", l.max, "suppressed", suppressed)
	return false
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

// HTTPSourceRefusals is how many visitor requests the HTTP ingress has
// answered 429 Too Many Requests because their source already had
// Config.MaxRequestsPerSource requests in flight.
func (s *Server) HTTPSourceRefusals() uint64 {
	return s.http.sources.refused.Load()
}
