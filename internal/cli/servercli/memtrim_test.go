package servercli

import (
	"io"
	"log/slog"
	"testing"
	"time"
)

// testTrim is a memTrim whose trims are sent on the returned channel.
func testTrim(quiet time.Duration, need int, interval time.Duration) (*memTrim, <-chan time.Time) {
	trims := make(chan time.Time, 10)
	m := &memTrim{quiet: quiet, need: need, interval: interval,
		trim: func() { trims <- time.Now() }, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	return m, trims
}

func waitTrim(t *testing.T, trims <-chan time.Time) time.Time {
	t.Helper()
	select {
	case at := <-trims:
		return at
	case <-time.After(10 * time.Second):
		t.Fatal("no trim")
	}
	return time.Time{}
}

// noTrim checks that no trim comes within d: what is checked is that
// nothing happens, so it can only wait.
func noTrim(t *testing.T, trims <-chan time.Time, d time.Duration, why string) {
	t.Helper()
	select {
	case <-trims:
		t.Fatalf("a trim %s", why)
	case <-time.After(d):
	}
}

// TestMemTrimAfterBurst: a trim comes once enough session events have
// come and then stopped for the quiet time, not before, and not for fewer
// events.
func TestMemTrimAfterBurst(t *testing.T) {
	m, trims := testTrim(50*time.Millisecond, 3, 0)
	defer m.close()
	m.event()
	m.event()
	noTrim(t, trims, 200*time.Millisecond, "after 2 events of the 3 needed")
	var last time.Time
	// Each event of the burst holds the trim back.
	for range 5 {
		m.event()
		last = time.Now()
	}
	at := waitTrim(t, trims)
	if quiet := at.Sub(last); quiet < 50*time.Millisecond {
		t.Fatalf("trimmed %v after the last event, want the quiet time (50ms) at least", quiet)
	}
	noTrim(t, trims, 200*time.Millisecond, "again with no event since")
}

// TestMemTrimInterval: two trims are an interval apart at least, however
// soon the next burst ends.
func TestMemTrimInterval(t *testing.T) {
	m, trims := testTrim(10*time.Millisecond, 2, 300*time.Millisecond)
	defer m.close()
	m.event()
	m.event()
	first := waitTrim(t, trims)
	m.event()
	m.event()
	second := waitTrim(t, trims)
	if gap := second.Sub(first); gap < 300*time.Millisecond {
		t.Fatalf("trims %v apart, want the interval (300ms) at least", gap)
	}
}

// TestMemTrimClosed: no trim after close, for events before or after it.
func TestMemTrimClosed(t *testing.T) {
	m, trims := testTrim(20*time.Millisecond, 2, 0)
	m.event()
	m.event()
	m.close()
	m.event()
	m.event()
	noTrim(t, trims, 200*time.Millisecond, "after close")
}

// TestMemTrimEventsDuringTrim: session events that come while a trim
// runs wait for the interval from that trim's start, as any other.
func TestMemTrimEventsDuringTrim(t *testing.T) {
	trims := make(chan time.Time, 10)
	m := &memTrim{quiet: 10 * time.Millisecond, need: 2, interval: 300 * time.Millisecond,
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	first := true
	m.trim = func() {
		trims <- time.Now()
		if first {
			first = false
			// A burst lands while the memory is being returned.
			m.event()
			m.event()
		}
	}
	defer m.close()
	m.event()
	m.event()
	a := waitTrim(t, trims)
	b := waitTrim(t, trims)
	if gap := b.Sub(a); gap < 300*time.Millisecond {
		t.Fatalf("trims %v apart, want the interval (300ms) at least", gap)
	}
}
