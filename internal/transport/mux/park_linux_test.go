package mux

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/readiness"
	"github.com/diglett/diglett/internal/testutil"
)

const testParkAfter = 30 * time.Millisecond

// parkedPair returns a client session and a server session over TLS whose
// server parks on a real poller after testParkAfter of silence. wrap, if
// not nil, wraps the client's TCP connection under its TLS.
func parkedPair(t *testing.T, wrap func(net.Conn) net.Conn) (cs, ss *Session) {
	t.Helper()
	return parkedPairAfter(t, wrap, testParkAfter)
}

// parkedPairAfter is parkedPair with a server that parks after the given
// silence.
func parkedPairAfter(t *testing.T, wrap func(net.Conn) net.Conn, after time.Duration) (cs, ss *Session) {
	t.Helper()
	p, err := readiness.New()
	if err != nil {
		t.Fatal(err)
	}
	c, s := tlsConnsOver(t, wrap)
	w, err := p.Watch(s.(*tls.Conn).NetConn().(*net.TCPConn))
	if err != nil {
		t.Fatal(err)
	}
	cs = Client(c, Config{})
	ss = Server(s, Config{Parker: w, ParkAfter: after, OnClose: func(error) { w.Close() }})
	t.Cleanup(func() {
		cs.Close()
		ss.Close()
		<-ss.Done()
		p.Close()
	})
	return cs, ss
}

func isParked(s *Session) bool {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	return s.parked
}

// waitParked waits until s has parked more than n times and is parked,
// with no goroutine left in its receive loop: want loops in all.
func waitParked(t *testing.T, s *Session, n int64, want int) {
	t.Helper()
	if err := testutil.Poll(5*time.Second, func() error {
		if p := s.parks.Load(); p <= n || !isParked(s) {
			return fmt.Errorf("parked %d times (want more than %d), parked now: %v", p, n, isParked(s))
		}
		if got := testutil.GoroutinesIn("mux.(*Session).recvLoop"); got != want {
			return fmt.Errorf("%d receive loops, want %d (the client's)", got, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestSessionParksWhenIdle: a server session silent for ParkAfter keeps
// no goroutine; a stream opened then is served, data both ways intact,
// and the session parks again once silent.
func TestSessionParksWhenIdle(t *testing.T) {
	cs, ss := parkedPair(t, nil)
	echoServer(ours{ss})
	waitParked(t, ss, 0, 1)
	if err := exchange(ours{cs}, 1, 256<<10); err != nil {
		t.Fatalf("after the first park: %v", err)
	}
	n := ss.parks.Load()
	waitParked(t, ss, n, 1)
	for i := range 3 {
		if err := exchange(ours{cs}, uint64(i+2), 1000); err != nil {
			t.Fatalf("exchange %d after parking again: %v", i, err)
		}
	}
	if ss.IsClosed() || cs.IsClosed() {
		t.Fatalf("a session ended: %v, %v", ss.Err(), cs.Err())
	}
}

// TestPingParksAtOnce: a ping that wakes a parked session is answered,
// and the session parks again at once rather than after ParkAfter; a
// stream's data afterwards is served as usual.
func TestPingParksAtOnce(t *testing.T) {
	const after = 3 * time.Second
	cs, ss := parkedPairAfter(t, nil, after)
	echoServer(ours{ss})
	waitParked(t, ss, 0, 1)
	for i := range 3 {
		n := ss.parks.Load()
		id := uint32(100 + i)
		cs.kmu.Lock()
		cs.pingID, cs.pingSent = id, time.Now()
		cs.rtt.Store(0)
		cs.kmu.Unlock()
		cs.sendControl(typePing, flagSYN, 0, id, true)
		// Well within ParkAfter: the loop did not wait it out.
		if err := testutil.Poll(after/2, func() error {
			if cs.RTT() == 0 {
				return fmt.Errorf("ping %d not answered", id)
			}
			if p := ss.parks.Load(); p <= n || !isParked(ss) {
				return fmt.Errorf("after ping %d: parked %d times, want more than %d", id, p, n)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := exchange(ours{cs}, 7, 64<<10); err != nil {
		t.Fatalf("after the pings: %v", err)
	}
}

// pausingConn writes each write in two halves with a pause between them
// longer than the peer's ParkAfter: the peer's read deadline passes in
// the middle of a TLS record, and of a multiplexer frame.
type pausingConn struct {
	net.Conn
	pauses atomic.Int64
}

func (c *pausingConn) Write(p []byte) (int, error) {
	if len(p) < 2 {
		return c.Conn.Write(p)
	}
	h := len(p) / 2
	n, err := c.Conn.Write(p[:h])
	if err != nil {
		return n, err
	}
	c.pauses.Add(1)
	time.Sleep(3 * testParkAfter) // the pause under test, not a wait
	m, err := c.Conn.Write(p[h:])
	return n + m, err
}

// TestParkDeadlineInsideFrame: the loop's deadline passing inside a
// record or a frame loses nothing and does not park the session.
func TestParkDeadlineInsideFrame(t *testing.T) {
	var pc *pausingConn
	cs, ss := parkedPair(t, func(c net.Conn) net.Conn {
		pc = &pausingConn{Conn: c}
		return pc
	})
	echoServer(ours{ss})
	parks := ss.parks.Load()
	before := pc.pauses.Load()
	// 100 KB: frames of 32 KB, each over more than one TLS record.
	if err := exchange(ours{cs}, 7, 100<<10); err != nil {
		t.Fatal(err)
	}
	if p := pc.pauses.Load() - before; p < 2 {
		t.Fatalf("the client paused %d times in its writes", p)
	}
	if ss.IsClosed() {
		t.Fatalf("the server session ended: %v", ss.Err())
	}
	// It may park between writes, when a pause fell between two of
	// them; never with a frame half read, which the exchange shows.
	t.Logf("%d parks during %d paused writes", ss.parks.Load()-parks, pc.pauses.Load()-before)
}

// TestParkedSessionSeesPeerLeave: the client closing its connection ends
// a parked server session at once: the poller wakes it (there is no
// keepalive here to notice).
func TestParkedSessionSeesPeerLeave(t *testing.T) {
	cs, ss := parkedPair(t, nil)
	waitParked(t, ss, 0, 1)
	cs.conn.Close()
	select {
	case <-ss.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a parked session did not see its peer leave")
	}
	if err := testutil.Poll(5*time.Second, func() error {
		if n := testutil.GoroutinesIn("mux.(*Session).recvLoop"); n != 0 {
			return fmt.Errorf("%d receive loops left", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestParkedSessionCloses: closing a parked session sends its GoAway
// code, which the peer reads, and leaves no goroutine.
func TestParkedSessionCloses(t *testing.T) {
	cs, ss := parkedPair(t, nil)
	waitParked(t, ss, 0, 1)
	ss.CloseWithError(5)
	select {
	case <-cs.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the client did not see the parked server close")
	}
	var ge *GoAwayError
	if !errors.As(cs.Err(), &ge) || !ge.Remote || ge.Code != 5 {
		t.Fatalf("client ended with %v, want the server's GoAway with code 5", cs.Err())
	}
	if err := testutil.Poll(5*time.Second, func() error {
		if n := testutil.GoroutinesIn("mux.(*Session).recvLoop"); n != 0 {
			return fmt.Errorf("%d receive loops left", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// refusing is a Parker that cannot watch anything.
type refusing struct{ asked atomic.Int64 }

func (r *refusing) Park(func()) bool { r.asked.Add(1); return false }
func (r *refusing) Unpark() bool     { return false }

// TestParkRefused: a session whose Parker refuses keeps its loop and
// goes on as usual.
func TestParkRefused(t *testing.T) {
	r := &refusing{}
	c, s := tlsConns(t)
	cs, ss := Client(c, Config{}), Server(s, Config{Parker: r, ParkAfter: testParkAfter})
	defer cs.Close()
	defer ss.Close()
	echoServer(ours{ss})
	if err := testutil.Poll(5*time.Second, func() error {
		if r.asked.Load() < 2 {
			return errors.New("the session did not ask to park twice")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if ss.parks.Load() != 0 || isParked(ss) {
		t.Fatal("the session counts a park its Parker refused")
	}
	if err := exchange(ours{cs}, 3, 64<<10); err != nil {
		t.Fatal(err)
	}
}

// TestParkedStreamsKeepData: data a stream received and its reader has
// not read yet stays while the session parks, and the stream's reader
// wakes for data that comes after.
func TestParkedStreamsKeepData(t *testing.T) {
	cs, ss := parkedPair(t, nil)
	st, err := cs.OpenStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte("before")); err != nil {
		t.Fatal(err)
	}
	sst, err := ss.AcceptStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	waitParked(t, ss, 0, 1)
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(sst)
		got <- b
	}()
	// The reader is waiting on the parked session.
	if _, err := st.Write([]byte(" and after")); err != nil {
		t.Fatal(err)
	}
	st.CloseWrite()
	select {
	case b := <-got:
		if !bytes.Equal(b, []byte("before and after")) {
			t.Fatalf("read %q", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stream's reader was not woken through the parked session")
	}
}
