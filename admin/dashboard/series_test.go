package dashboard

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/diglett/diglett/gateway"
)

// clock is a settable time for a Series.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newTestSeries(max int) (*Series, *clock) {
	c := &clock{t: time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC)}
	s := NewSeries(max)
	s.now = c.now
	return s, c
}

func sum(v []int64) (n int64) {
	for _, x := range v {
		n += x
	}
	return n
}

func TestSeriesCounts(t *testing.T) {
	s, c := newTestSeries(0)
	s.TunnelChanged("web", gateway.TunnelLive, 1)
	s.RequestDone("web", 200, 10, 100, time.Millisecond)
	s.RequestDone("web", 404, 5, 50, time.Millisecond)
	s.VisitorOpened("web")
	s.VisitorClosed("web", 1000, 2000)
	s.RequestDone("unknown", 200, 1, 1, 0) // never published: not kept
	c.advance(Interval)
	s.RequestDone("web", 200, 1, 2, time.Millisecond)

	snap := s.Snapshot("")
	if snap.IntervalSeconds != 5 || len(snap.Tunnels) != 1 {
		t.Fatalf("snapshot: %+v", snap)
	}
	if want := time.Date(2026, 12, 2, 3, 0, 5, 0, time.UTC).Add(-time.Duration(Points-1) * Interval); !snap.Start.Equal(want) {
		t.Errorf("start %v, want %v", snap.Start, want)
	}
	ts := snap.Tunnels[0]
	if ts.Tunnel != "web" || len(ts.Requests) != Points || len(ts.BytesOut) != Points {
		t.Fatalf("tunnel series: %s with %d points", ts.Tunnel, len(ts.Requests))
	}
	last, prev := Points-1, Points-2
	if ts.Requests[prev] != 2 || ts.Connections[prev] != 1 || ts.BytesIn[prev] != 1015 || ts.BytesOut[prev] != 2150 {
		t.Errorf("previous point: %d requests, %d connections, %d in, %d out",
			ts.Requests[prev], ts.Connections[prev], ts.BytesIn[prev], ts.BytesOut[prev])
	}
	if ts.Requests[last] != 1 || ts.BytesIn[last] != 1 || ts.BytesOut[last] != 2 {
		t.Errorf("last point: %d requests, %d in, %d out", ts.Requests[last], ts.BytesIn[last], ts.BytesOut[last])
	}
	if sum(ts.Requests) != 3 {
		t.Errorf("%d requests in all, want 3", sum(ts.Requests))
	}
}

// Points older than the window go, and a slot reused by the ring starts
// from zero.
func TestSeriesWindow(t *testing.T) {
	s, c := newTestSeries(0)
	s.TunnelChanged("web", gateway.TunnelLive, 1)
	s.RequestDone("web", 200, 0, 0, 0)
	c.advance(time.Duration(Points-1) * Interval)
	if got := sum(s.Snapshot("web").Tunnels[0].Requests); got != 1 {
		t.Fatalf("at the window's edge: %d requests, want 1", got)
	}
	c.advance(Interval) // same ring slot as the first point
	if got := sum(s.Snapshot("web").Tunnels[0].Requests); got != 0 {
		t.Fatalf("after the window: %d requests, want 0", got)
	}
	s.RequestDone("web", 200, 0, 0, 0)
	if got := s.Snapshot("web").Tunnels[0].Requests[Points-1]; got != 1 {
		t.Fatalf("reused slot: %d requests, want 1", got)
	}
}

// Removed tunnels go, leased ones stay, and no more than max are kept.
func TestSeriesBounded(t *testing.T) {
	s, _ := newTestSeries(2)
	s.TunnelChanged("a", gateway.TunnelLive, 1)
	s.TunnelChanged("b", gateway.TunnelLive, 1)
	s.TunnelChanged("c", gateway.TunnelLive, 1) // over the bound
	s.VisitorOpened("c")
	names := func() (out []string) {
		for _, ts := range s.Snapshot("").Tunnels {
			out = append(out, ts.Tunnel)
		}
		return out
	}
	if got := names(); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("tunnels kept: %v, want [a b]", got)
	}
	s.TunnelChanged("a", gateway.TunnelLeased, 0)
	s.TunnelChanged("b", gateway.TunnelRemoved, 0)
	if got := names(); len(got) != 1 || got[0] != "a" {
		t.Fatalf("tunnels kept: %v, want [a]", got)
	}
	s.TunnelChanged("c", gateway.TunnelLive, 2)
	if got := names(); len(got) != 2 || got[1] != "c" {
		t.Fatalf("tunnels kept: %v, want [a c]", got)
	}
	if got := len(s.Snapshot("c").Tunnels); got != 1 {
		t.Fatalf("?tunnel=c: %d tunnels", got)
	}
}

func TestSeriesHandler(t *testing.T) {
	s, _ := newTestSeries(0)
	s.TunnelChanged("web", gateway.TunnelLive, 1)
	s.TunnelChanged("db", gateway.TunnelLive, 1)
	s.VisitorOpened("db")
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/series?tunnel=db", nil))
	var snap Snapshot
	if err := json.Unmarshal(rec.Body.Bytes(), &snap); err != nil || rec.Code != 200 {
		t.Fatalf("%d %v: %s", rec.Code, err, rec.Body)
	}
	if len(snap.Tunnels) != 1 || snap.Tunnels[0].Tunnel != "db" || sum(snap.Tunnels[0].Connections) != 1 {
		t.Errorf("answer: %+v", snap)
	}
	rec = httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest("POST", "/api/v1/series", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", rec.Code)
	}
}

// Events from many goroutines are all counted (run with -race).
func TestSeriesConcurrent(t *testing.T) {
	s, _ := newTestSeries(0)
	s.TunnelChanged("web", gateway.TunnelLive, 1)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				s.RequestDone("web", 200, 1, 1, 0)
				s.Snapshot("web")
			}
		})
	}
	wg.Wait()
	if got := sum(s.Snapshot("web").Tunnels[0].Requests); got != 8000 {
		t.Fatalf("%d requests, want 8000", got)
	}
}

// A published tunnel that has carried nothing is listed with zero points
// and holds no ring; its first event makes one.
func TestSeriesIdleTunnelHoldsNoRing(t *testing.T) {
	s, _ := newTestSeries(0)
	s.TunnelChanged("idle", gateway.TunnelLive, 1)
	snap := s.Snapshot("idle")
	if len(snap.Tunnels) != 1 || len(snap.Tunnels[0].Requests) != Points || sum(snap.Tunnels[0].Requests) != 0 {
		t.Fatalf("idle tunnel's snapshot: %+v", snap.Tunnels)
	}
	s.mu.Lock()
	r := s.tunnels["idle"]
	s.mu.Unlock()
	if r != nil {
		t.Fatal("an idle tunnel holds a ring")
	}
	s.VisitorOpened("idle")
	if got := s.Snapshot("idle").Tunnels[0].Connections[Points-1]; got != 1 {
		t.Fatalf("after the first event: %d connections, want 1", got)
	}
}

// TestSeriesQuietTunnelDropsRing: a tunnel that carried nothing for the
// whole window gives its ring back at the next interval's first event (of
// any tunnel), still listed with zeros, and gets a ring anew with its
// next event.
func TestSeriesQuietTunnelDropsRing(t *testing.T) {
	s, c := newTestSeries(0)
	s.TunnelChanged("quiet", gateway.TunnelLive, 1)
	s.TunnelChanged("busy", gateway.TunnelLive, 1)
	s.VisitorOpened("quiet")
	ringOf := func(name string) *ring {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.tunnels[name]
	}
	// Its last point still in the window: kept.
	c.advance(time.Duration(Points-1) * Interval)
	s.VisitorOpened("busy")
	if ringOf("quiet") == nil {
		t.Fatal("a ring with a point in the window was dropped")
	}
	if got := sum(s.Snapshot("quiet").Tunnels[0].Connections); got != 1 {
		t.Fatalf("quiet's window holds %d connections, want 1", got)
	}
	// One interval more: nothing of it is in the window.
	c.advance(Interval)
	s.VisitorOpened("busy")
	if ringOf("quiet") != nil {
		t.Fatal("a tunnel quiet for the whole window keeps its ring")
	}
	if ringOf("busy") == nil {
		t.Fatal("the busy tunnel lost its ring")
	}
	snap := s.Snapshot("quiet")
	if len(snap.Tunnels) != 1 || sum(snap.Tunnels[0].Connections) != 0 {
		t.Fatalf("quiet's snapshot after the drop: %+v", snap.Tunnels)
	}
	s.VisitorOpened("quiet")
	if ringOf("quiet") == nil || s.Snapshot("quiet").Tunnels[0].Connections[Points-1] != 1 {
		t.Fatal("quiet's next event was not charted")
	}
}
