package servercli

import (
	"log/slog"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"
)

// Memory returned to the system after a burst of agent sessions.
//
// Every agent login is a TLS handshake, which leaves some tens of KB of
// garbage behind it. After a burst of them (the gateway restarted, a
// network blip reconnected every agent) the runtime keeps that memory
// resident until a collection frees it, and even then keeps up to twice
// the live heap: a gateway with a thousand idle sessions held about 56 KB
// of RSS per session, of which about 37 KB was live. Once session logins
// and departures have been quiet for a while, the gateway collects and
// returns what is free at once (runtime/debug.FreeOSMemory), at most once
// per interval. This is the binary's policy for its own process: the
// gateway package, which others embed, does not do it.

const (
	trimQuiet    = 2 * time.Second  // no session event for this long
	trimEvents   = 64               // session events since the last trim
	trimInterval = 30 * time.Second // between two trims at least
)

// memTrim counts session events and trims when enough of them have come
// and then stopped. Its methods are safe for concurrent use.
type memTrim struct {
	quiet    time.Duration
	need     int // session events that make a trim
	interval time.Duration
	trim     func()
	log      *slog.Logger

	mu     sync.Mutex
	count  int       // events since the last trim
	last   time.Time // when the last trim began
	timer  *time.Timer
	closed bool
}

func newMemTrim(log *slog.Logger) *memTrim {
	return &memTrim{quiet: trimQuiet, need: trimEvents, interval: trimInterval, trim: debug.FreeOSMemory, log: log}
}

// event notes an agent's login or departure.
func (m *memTrim) event() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	m.count++
	if m.count < m.need {
		return
	}
	wait := m.quiet
	if rest := m.interval - time.Since(m.last); rest > wait {
		wait = rest
	}
	if m.timer == nil {
		m.timer = time.AfterFunc(wait, m.fire)
	} else {
		m.timer.Reset(wait)
	}
}

func (m *memTrim) fire() {
	m.mu.Lock()
	if m.closed || m.count < m.need {
		m.mu.Unlock()
		return
	}
	n := m.count
	m.count = 0
	// Set with the count: an event that comes while this trim runs
	// waits for the interval from it, not for the quiet time alone.
	start := time.Now()
	m.last = start
	m.mu.Unlock()
	before := heapReleased()
	m.trim()
	m.log.Debug("memory returned to the system after a burst of sessions", "sessions", n,
		"released", int64(heapReleased()-before), "took", time.Since(start).Round(time.Microsecond))
}

// close stops the trims.
func (m *memTrim) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	if m.timer != nil {
		m.timer.Stop()
	}
}

// heapReleased is the heap memory the runtime has returned to the system.
func heapReleased() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// trimObserver tells o every event, and m the sessions' logins and
// departures.
type trimObserver struct {
	gatewayObserver
	m *memTrim
}

func (o trimObserver) SessionOpened(transport string) {
	o.gatewayObserver.SessionOpened(transport)
	o.m.event()
}

func (o trimObserver) SessionClosed(transport string) {
	o.gatewayObserver.SessionClosed(transport)
	o.m.event()
}
