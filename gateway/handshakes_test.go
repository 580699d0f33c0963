package gateway

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"
)

// The accounting on its own: the per-source cap, shedding from the largest
// holder when full, and refusal when every source holds its share.
func TestHandshakeSlots(t *testing.T) {
	t.Parallel()
	h := newHandshakes(4, 3, slog.New(slog.DiscardHandler))
	defer h.summary.Close()
	src := func(s string) netip.Prefix { return netip.MustParsePrefix(s) }
	a, b, c, d, e := src("192.0.2.1/32"), src("192.0.2.2/32"), src("2001:db8::/64"), src("192.0.2.4/32"), src("192.0.2.5/32")

	var aSlots []*hsSlot
	shed := make([]bool, 3)
	for i := range 3 {
		sl := h.acquire(a)
		if sl == nil {
			t.Fatalf("slot %d of source a refused", i)
		}
		sl.onShed(func() { shed[i] = true })
		aSlots = append(aSlots, sl)
	}
	if h.acquire(a) != nil {
		t.Fatal("a fourth slot for source a: want refused at the per-source cap")
	}
	if h.acquire(b) == nil {
		t.Fatal("source b refused with a slot free")
	}
	// Full (4): c holds none, a holds 3: a's oldest goes.
	cSlot := h.acquire(c)
	if cSlot == nil || !shed[0] || shed[1] {
		t.Fatalf("full gateway: got slot %v, shed %v; want a's oldest shed for c", cSlot, shed)
	}
	// a holds 2, d none: a's next oldest goes.
	if h.acquire(d) == nil || !shed[1] || shed[2] {
		t.Fatalf("shed %v: want a's second slot shed for d", shed)
	}
	// Everyone holds one: a newcomer would hold as many, so it is refused.
	if h.acquire(e) != nil {
		t.Fatal("full gateway with equal holders: newcomer admitted")
	}
	st := h.stats()
	if st.InProgress != 4 || st.Sources != 4 || st.RefusedPerSource != 1 || st.RefusedFull != 1 || st.Shed != 2 {
		t.Fatalf("stats %+v", st)
	}
	// A shed slot released again is harmless; a shed func set late runs
	// at once.
	aSlots[0].release()
	late := false
	aSlots[0].onShed(func() { late = true })
	if !late {
		t.Fatal("onShed on a shed slot did not run at once")
	}
	cSlot.release()
	cSlot.release()
	if h.acquire(e) == nil {
		t.Fatal("slot released, newcomer still refused")
	}
	if st := h.stats(); st.InProgress != 4 {
		t.Fatalf("in progress %d after release and acquire, want 4", st.InProgress)
	}
}

// dialFrom connects to addr from the loopback address local (all of
// 127/8 is local on the test machines).
func dialFrom(t *testing.T, local, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// refusedBusy reports whether the server answered c with the busy alert and
// closed it within d.
func refusedBusy(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	got, _ := io.ReadAll(c)
	return bytes.Equal(got, busyAlert)
}

// waitInProgress waits until the server counts n handshakes in progress.
func waitInProgress(t *testing.T, srv *Server, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for srv.HandshakeStats().InProgress != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d handshakes in progress, want %d", srv.HandshakeStats().InProgress, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Over real sockets: a source above its cap gets the busy alert; another
// source still gets in; when the gateway is full, a newcomer from a small
// source sheds the largest holder's oldest connection.
func TestHandshakeSlotsOverTCP(t *testing.T) {
	t.Parallel()
	srv, addr := newServer(t, Config{MaxHandshakes: 6, MaxHandshakesPerSource: 4, HandshakeTimeout: time.Minute, FirstByteTimeout: time.Minute})
	var flood []net.Conn
	for range 4 {
		flood = append(flood, dialFrom(t, "127.0.0.2", addr))
		// In order: the first is the oldest.
		waitInProgress(t, srv, len(flood))
	}
	if over := dialFrom(t, "127.0.0.2", addr); !refusedBusy(over, 5*time.Second) {
		t.Fatal("connection above the per-source cap: no busy alert")
	}
	dialFrom(t, "127.0.0.3", addr)
	dialFrom(t, "127.0.0.4", addr)
	waitInProgress(t, srv, 6)
	// Full: 127.0.0.5 holds none, 127.0.0.2 holds 4.
	newcomer := dialFrom(t, "127.0.0.5", addr)
	if !closedWithin(flood[0], 5*time.Second) {
		t.Fatal("full gateway: the largest holder's oldest connection was not shed")
	}
	if closedWithin(newcomer, 300*time.Millisecond) || closedWithin(flood[1], 10*time.Millisecond) {
		t.Fatal("the newcomer or a younger connection was closed")
	}
	st := srv.HandshakeStats()
	if st.InProgress != 6 || st.RefusedPerSource != 1 || st.Shed != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// A connection that sends nothing is closed after FirstByteTimeout; one
// that sent a byte has the whole HandshakeTimeout.
func TestFirstByteTimeout(t *testing.T) {
	t.Parallel()
	srv, addr := newServer(t, Config{HandshakeTimeout: time.Minute, FirstByteTimeout: 200 * time.Millisecond})
	silent := dialFrom(t, "127.0.0.1", addr)
	started := dialFrom(t, "127.0.0.1", addr)
	if _, err := started.Write([]byte{0x16}); err != nil { // a TLS handshake record begins
		t.Fatal(err)
	}
	if !closedWithin(silent, 5*time.Second) {
		t.Fatal("silent connection outlived FirstByteTimeout")
	}
	if closedWithin(started, time.Second) {
		t.Fatal("a connection that sent its first byte was closed before HandshakeTimeout")
	}
	if n := srv.HandshakeStats().FirstByteTimeouts; n != 1 {
		t.Fatalf("%d first-byte timeouts counted, want 1", n)
	}
}
