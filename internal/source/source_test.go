package source

import (
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

func TestOfAddr(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr       net.Addr
		want, name string
	}{
		{&net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 1}, "192.0.2.7/32", "192.0.2.7"},
		{&net.UDPAddr{IP: net.ParseIP("::ffff:192.0.2.7"), Port: 1}, "192.0.2.7/32", "192.0.2.7"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:3:4:5:6"), Port: 1}, "2001:db8:1:2::/64", "2001:db8:1:2::/64"},
		{&net.TCPAddr{IP: net.ParseIP("fe80::1"), Port: 1, Zone: "eth0"}, "fe80::/64", "fe80::/64"},
		{&net.UnixAddr{Name: "/tmp/x", Net: "unix"}, "invalid Prefix", "unknown"},
		{nil, "invalid Prefix", "unknown"},
	} {
		p := OfAddr(tc.addr)
		if got := p.String(); got != tc.want {
			t.Errorf("OfAddr(%v) = %s, want %s", tc.addr, got, tc.want)
		}
		if got := Name(p); got != tc.name {
			t.Errorf("Name(%s) = %s, want %s", p, got, tc.name)
		}
	}
	if Of(netip.MustParseAddr("2001:db8::1")) != Of(netip.MustParseAddr("2001:db8::ffff")) {
		t.Error("two addresses of one /64 are two sources")
	}
}

// TestSummary: the first event is logged at once, those that follow within
// the interval in one line at its end, with counts by reason and the top
// sources; the sources counted are bounded.
func TestSummary(t *testing.T) {
	t.Parallel()
	var out testutil.Buffer
	const every = 200 * time.Millisecond
	s := NewSummary(slog.New(slog.NewTextHandler(&out, nil)), "refused", every, "full", "slow")
	defer s.Close()
	a := Of(netip.MustParseAddr("192.0.2.1"))
	b := Of(netip.MustParseAddr("2001:db8::1"))
	s.Add("full", a)
	if lines := out.Lines(); len(lines) != 1 || !strings.Contains(lines[0], "full=1 slow=0") {
		t.Fatalf("first event: %q", lines)
	}
	for range 3 {
		s.Add("slow", a)
	}
	s.Add("full", b)
	if err := testutil.Poll(5*time.Second, func() error {
		if len(out.Lines()) < 2 {
			return net.ErrClosed
		}
		return nil
	}); err != nil {
		t.Fatalf("no summary at the end of the interval: %q", out.Lines())
	}
	if line := out.Lines()[1]; !strings.Contains(line, "full=1 slow=3 sources=2") || !strings.Contains(line, `top_sources="192.0.2.1=3 2001:db8::/64=1"`) {
		t.Fatalf("summary: %q", line)
	}
	for i := range MaxSources + 100 {
		s.Add("full", Of(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})))
	}
	if n := s.Sources(); n > MaxSources {
		t.Fatalf("%d sources counted, at most %d", n, MaxSources)
	}
}
