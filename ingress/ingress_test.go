package ingress

import (
	"net/http"
	"net/netip"
	"testing"
)

func TestClientIP(t *testing.T) {
	in := &Server{cfg: Config{TrustedProxies: []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.1/32"),
	}}}
	for _, tc := range []struct {
		peer, xff, want string
	}{
		{"192.0.2.1", "203.0.113.5", "192.0.2.1"},                 // untrusted peer: its header is ignored
		{"127.0.0.1", "203.0.113.5", "203.0.113.5"},               // trusted proxy names the visitor
		{"127.0.0.1", "203.0.113.5, 10.1.2.3", "203.0.113.5"},     // through two trusted proxies
		{"127.0.0.1", "198.51.100.7, 203.0.113.5", "203.0.113.5"}, // the visitor cannot choose its address
		{"127.0.0.1", "garbage, 203.0.113.5", "203.0.113.5"},      // stops at the nearest untrusted one
		{"127.0.0.1", "", "127.0.0.1"},                            // no header: the proxy itself
		{"127.0.0.1", "10.0.0.9, not-an-ip", "127.0.0.1"},         // unparsable: the last address known
		{"::ffff:127.0.0.1", "203.0.113.5", "203.0.113.5"},        // mapped addresses are IPv4
	} {
		r := &http.Request{Header: http.Header{}}
		if tc.xff != "" {
			r.Header.Set("X-Forwarded-For", tc.xff)
		}
		peer := netip.MustParseAddr(tc.peer).Unmap()
		if got := in.clientIP(r, peer); got.String() != tc.want {
			t.Errorf("peer %s, X-Forwarded-For %q: client %s, want %s", tc.peer, tc.xff, got, tc.want)
		}
	}
}
