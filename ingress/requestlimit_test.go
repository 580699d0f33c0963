package ingress

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/source"
	"github.com/diglett/diglett/internal/testutil"
)

func TestRequestSource(t *testing.T) {
	t.Parallel()
	for ip, want := range map[string]string{
		"192.0.2.7":                "192.0.2.7/32",
		"::ffff:192.0.2.7":         "192.0.2.7/32",
		"2001:db8:1:2:3:4:5:6":     "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::1":     "2001:db8:1:2::/64",
		"fe80::1%eth0":             "fe80::/64",
		"2001:db8:1:3::1":          "2001:db8:1:3::/64",
		"2001:0db8:0001:0002::abc": "2001:db8:1:2::/64",
	} {
		if got := requestSource(netip.MustParseAddr(ip)); got.String() != want {
			t.Errorf("requestSource(%s) = %s, want %s", ip, got, want)
		}
	}
	if got := requestSource(netip.Addr{}); got.IsValid() {
		t.Errorf("requestSource of no address = %s", got)
	}
}

func TestSourceLimiter(t *testing.T) {
	t.Parallel()
	var out testutil.Buffer
	const every = 200 * time.Millisecond
	l := newSourceLimiter(3, slog.New(slog.NewTextHandler(&out, nil)), every)
	defer l.summary.Close()
	a := requestSource(netip.MustParseAddr("2001:db8::1"))
	a2 := requestSource(netip.MustParseAddr("2001:db8::2")) // the same /64
	b := requestSource(netip.MustParseAddr("192.0.2.1"))

	for i := range 3 {
		src := a
		if i == 1 {
			src = a2
		}
		if !l.acquire(src) {
			t.Fatalf("request %d refused", i)
		}
	}
	for range 5 {
		if l.acquire(a2) {
			t.Fatal("a fourth request of one /64 admitted")
		}
	}
	if !l.acquire(b) {
		t.Fatal("another source refused")
	}
	if n := l.refused.Load(); n != 5 {
		t.Fatalf("refused %d, want 5", n)
	}
	// The first refusal is logged at once, the four that follow within
	// the interval in one line at its end.
	lines := out.Lines()
	if len(lines) != 1 || !strings.Contains(lines[0], "level=WARN") || !strings.Contains(lines[0], "more than 3 in flight") ||
		!strings.Contains(lines[0], "refused=1") || !strings.Contains(lines[0], `top_sources="2001:db8::/64=1"`) {
		t.Fatalf("logged %q, want one warning for the /64", lines)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(out.Lines()) < 2 && time.Now().Before(deadline) {
		time.Sleep(every / 4)
	}
	if lines := out.Lines(); len(lines) != 2 || !strings.Contains(lines[1], "refused=4") || !strings.Contains(lines[1], `top_sources="2001:db8::/64=4"`) {
		t.Fatalf("logged %q, want a second line summing up the 4 refusals that followed", lines)
	}

	// Entries go when their count returns to zero.
	for range 3 {
		l.release(a)
	}
	l.release(b)
	l.mu.Lock()
	n := len(l.inflight)
	l.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d sources still counted with nothing in flight", n)
	}
	if !l.acquire(a) {
		t.Fatal("a source refused after its requests ended")
	}
	l.release(a)
}

// TestSourceLimiterMemory: 100,000 sources come and go; the limiter keeps
// none of them once their requests end, and its log summary keeps a
// bounded number.
func TestSourceLimiterMemory(t *testing.T) {
	t.Parallel()
	l := newSourceLimiter(1, slog.New(slog.DiscardHandler), time.Hour)
	defer l.summary.Close()
	for i := range 100_000 {
		src := requestSource(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
		if !l.acquire(src) || l.acquire(src) {
			t.Fatal("want the first request in, the second refused")
		}
		l.release(src)
	}
	l.mu.Lock()
	inflight := len(l.inflight)
	l.mu.Unlock()
	logged := l.summary.Sources()
	if inflight != 0 || logged > source.MaxSources {
		t.Fatalf("%d sources in flight, %d remembered for logging (at most %d)", inflight, logged, source.MaxSources)
	}
}
