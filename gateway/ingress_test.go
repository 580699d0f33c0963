package gateway

import (
	"net/http"
	"net/netip"
	"testing"

	"github.com/diglett/diglett/internal/protocol"
)

func TestTunnelName(t *testing.T) {
	s := &Server{cfg: Config{Domain: "gw.example"}.withDefaults()}
	for host, want := range map[string]string{
		"app.gw.example":           "app",
		"APP.GW.Example":           "app",
		"app.gw.example.":          "app",
		"app.gw.example:8443":      "app",
		"app.gw.example.:80":       "app",
		"a-1.gw.example":           "a-1",
		"gw.example":               "",
		".gw.example":              "",
		"x.app.gw.example":         "",
		"app.gw.example.evil":      "",
		"appgw.example":            "",
		"-app.gw.example":          "",
		"app_1.gw.example":         "",
		"[::1]:80":                 "",
		"127.0.0.1":                "",
		"":                         "",
		"app.gw.example:":          "", // a port that is not a number
		"app.gw.example:1,evil":    "",
		"app.gw.example::1":        "",
		"xn--bcher-kva.gw.example": "xn--bcher-kva",
	} {
		got, ok := s.tunnelName(host)
		if got != want || ok != (want != "") {
			t.Errorf("tunnelName(%q) = %q, %v; want %q", host, got, ok, want)
		}
	}
}

func TestClientIP(t *testing.T) {
	in := &ingress{srv: &Server{cfg: Config{TrustedProxies: []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.1/32"),
	}}}}
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

func TestVisitorPolicy(t *testing.T) {
	p, err := newVisitorPolicy(&protocol.Register{Name: "a", AllowIPs: []string{"10.0.0.0/8", "2001:db8::/32", "192.0.2.7"},
		BasicAuth: &protocol.BasicAuth{User: "alice", Password: "s3cret"}})
	if err != nil {
		t.Fatal(err)
	}
	for ip, want := range map[string]bool{
		"10.1.2.3": true, "::ffff:10.1.2.3": true, "2001:db8::1": true, "192.0.2.7": true,
		"192.0.2.8": false, "11.0.0.1": false, "2001:db9::1": false,
	} {
		if got := p.allows(netip.MustParseAddr(ip)); got != want {
			t.Errorf("allows(%s) = %v", ip, got)
		}
	}
	if !p.checkPassword("alice", "s3cret") || p.checkPassword("alice", "s3cre") || p.checkPassword("bob", "s3cret") {
		t.Error("checkPassword")
	}
	if open, _ := newVisitorPolicy(&protocol.Register{Name: "a"}); !open.allows(netip.MustParseAddr("203.0.113.1")) {
		t.Error("no allow-list must let everyone in")
	}
}
