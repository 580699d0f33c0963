package dashboard

import (
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/ingress"
)

// The shape of every series: Points points of Interval each, the last one
// the interval under way.
const (
	Interval = 5 * time.Second
	Points   = int(15 * time.Minute / Interval)
)

// DefaultMaxTunnels is how many tunnels a Series keeps by default.
const DefaultMaxTunnels = 1000

// Series keeps, in memory, what each published tunnel carried over the
// last 15 minutes, in 5-second points: HTTP requests answered, TCP
// visitor connections taken, and bytes from and to visitors (counted as
// each request or connection ends, as the metrics count them). Each
// tunnel has a fixed ring of Points points (7 KiB), made at its first event
// and dropped once it has carried nothing for the whole window; a tunnel is kept from the
// moment it is published (live or leased) until it is removed, and at most
// MaxTunnels at once: one published beyond that is not charted until it
// is published anew. Hand a Series to gateway.Config.Observer and
// ingress.Config.Observer (through a tee to keep the metrics); its methods
// are safe for concurrent use and return at once.
type Series struct {
	gateway.NopObserver

	max int
	now func() time.Time // time.Now but in tests

	mu      sync.Mutex
	tunnels map[string]*ring // nil until the tunnel's first event
	swept   int64            // the slot of the last sweep (add)
}

// Interface guards.
var (
	_ gateway.Observer = (*Series)(nil)
	_ ingress.Observer = (*Series)(nil)
	_ http.Handler     = (*Series)(nil)
)

// NewSeries returns an empty Series keeping at most maxTunnels tunnels; 0
// means DefaultMaxTunnels.
func NewSeries(maxTunnels int) *Series {
	if maxTunnels <= 0 {
		maxTunnels = DefaultMaxTunnels
	}
	return &Series{max: maxTunnels, now: time.Now, tunnels: make(map[string]*ring)}
}

// point is what a tunnel carried during one interval, the slot-th since
// the Unix epoch.
type point struct {
	slot        int64
	requests    int64
	connections int64
	in, out     int64
}

// ring is a tunnel's points: the point of slot s is at s % Points, if
// that one is of slot s.
type ring struct {
	pts  [Points]point
	last int64 // the newest slot of a point
}

// at is the point of slot, cleared if it held an older one.
func (r *ring) at(slot int64) *point {
	p := &r.pts[slot%int64(Points)]
	if p.slot != slot {
		*p = point{slot: slot}
	}
	r.last = max(r.last, slot)
	return p
}

// slotOf is the interval t falls in.
func slotOf(t time.Time) int64 { return t.Unix() / int64(Interval/time.Second) }

// TunnelChanged starts keeping a tunnel once it is published and drops
// it once it is removed.
func (s *Series) TunnelChanged(tunnel string, state gateway.TunnelState, _ int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if state == gateway.TunnelRemoved {
		delete(s.tunnels, tunnel)
		return
	}
	if _, kept := s.tunnels[tunnel]; !kept && len(s.tunnels) < s.max {
		// The ring comes with the tunnel's first event: an idle
		// tunnel costs a map entry, not its 7 KiB of points.
		s.tunnels[tunnel] = nil
	}
}

// add applies f to the current point of tunnel, if it is kept. Once an
// interval, it also drops the rings of tunnels that carried nothing for
// the whole window: a tunnel idle for 15 minutes costs a map entry again.
func (s *Series) add(tunnel string, f func(*point)) {
	slot := slotOf(s.now())
	s.mu.Lock()
	defer s.mu.Unlock()
	if slot != s.swept {
		s.swept = slot
		for name, r := range s.tunnels {
			if r != nil && r.last <= slot-int64(Points) {
				s.tunnels[name] = nil
			}
		}
	}
	r, kept := s.tunnels[tunnel]
	if !kept {
		return
	}
	if r == nil {
		r = new(ring)
		s.tunnels[tunnel] = r
	}
	f(r.at(slot))
}

// VisitorOpened counts a TCP visitor connection.
func (s *Series) VisitorOpened(tunnel string) {
	s.add(tunnel, func(p *point) { p.connections++ })
}

// VisitorClosed counts a TCP visitor's bytes.
func (s *Series) VisitorClosed(tunnel string, in, out int64) {
	s.add(tunnel, func(p *point) { p.in += in; p.out += out })
}

// RequestStarted is not counted: a request counts once answered.
func (s *Series) RequestStarted(string) {}

// RequestDone counts an HTTP request answered and its bytes.
func (s *Series) RequestDone(tunnel string, _ int, in, out int64, _ time.Duration) {
	s.add(tunnel, func(p *point) { p.requests++; p.in += in; p.out += out })
}

// Snapshot is the series at one moment, as GET /api/v1/series gives it.
type Snapshot struct {
	// IntervalSeconds is the length of each point.
	IntervalSeconds int `json:"interval_seconds"`
	// Start is when the first point's interval began; the last point's
	// is the one under way.
	Start time.Time `json:"start"`
	// Tunnels are the tunnels kept, by name.
	Tunnels []TunnelSeries `json:"tunnels"`
}

// TunnelSeries is one tunnel's points, oldest first, Points of each.
type TunnelSeries struct {
	Tunnel string `json:"tunnel"`
	// Requests are the HTTP requests answered in each interval.
	Requests []int64 `json:"requests"`
	// Connections are the TCP visitor connections taken.
	Connections []int64 `json:"connections"`
	// BytesIn are the bytes from visitors, BytesOut those to them, of
	// the requests and connections that ended in each interval.
	BytesIn  []int64 `json:"bytes_in"`
	BytesOut []int64 `json:"bytes_out"`
}

// Snapshot returns the series of the tunnels kept (only tunnel's, if it
// is not ""), by name.
func (s *Series) Snapshot(tunnel string) Snapshot {
	end := slotOf(s.now())
	first := end - int64(Points) + 1
	snap := Snapshot{
		IntervalSeconds: int(Interval / time.Second),
		Start:           time.Unix(first*int64(Interval/time.Second), 0).UTC(),
		Tunnels:         []TunnelSeries{},
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, r := range s.tunnels {
		if tunnel != "" && name != tunnel {
			continue
		}
		ts := TunnelSeries{
			Tunnel:      name,
			Requests:    make([]int64, Points),
			Connections: make([]int64, Points),
			BytesIn:     make([]int64, Points),
			BytesOut:    make([]int64, Points),
		}
		for i := range Points {
			if r == nil {
				break // nothing carried yet: all zero
			}
			slot := first + int64(i)
			p := &r.pts[slot%int64(Points)]
			if p.slot != slot {
				continue
			}
			ts.Requests[i], ts.Connections[i] = p.requests, p.connections
			ts.BytesIn[i], ts.BytesOut[i] = p.in, p.out
		}
		snap.Tunnels = append(snap.Tunnels, ts)
	}
	sort.Slice(snap.Tunnels, func(i, j int) bool { return snap.Tunnels[i].Tunnel < snap.Tunnels[j].Tunnel })
	return snap
}

// ServeHTTP serves GET /api/v1/series: the Snapshot in JSON, of one
// tunnel with ?tunnel=NAME.
func (s *Series) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !getOnly(w, r) {
		return
	}
	writeJSON(w, http.StatusOK, s.Snapshot(r.URL.Query().Get("tunnel")))
}
