package gateway

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/diglett/diglett/internal/protocol"
)

func TestParseHost(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		host, name, forwarded string
		malformed             bool
	}{
		{host: "app.gw.example", name: "app", forwarded: "app.gw.example"},
		{host: "APP.GW.Example.", name: "app", forwarded: "app.gw.example"},
		{host: "app.gw.example:8443", name: "app", forwarded: "app.gw.example:8443"},
		{host: "app.gw.example.:080", name: "app", forwarded: "app.gw.example:80"},
		{host: "app.gw.example:0", name: "app", forwarded: "app.gw.example:0"},
		{host: "app.gw.example:65535", name: "app", forwarded: "app.gw.example:65535"},
		{host: "app.gw.example:00", name: "app", forwarded: "app.gw.example:0"},
		{host: "App.gw.example:443", name: "app", forwarded: "app.gw.example:443"},
		{host: "app.gw.example.", name: "app", forwarded: "app.gw.example"},
		{host: "a.b", name: "", forwarded: ""},
		{host: ".gw.example"},
		{host: "appgw.example"},
		{host: "app.gw.examplf"},
		{host: "app.gw.example:1,evil.com", malformed: true},
		{host: "app.gw.example:abc", malformed: true},
		{host: "app.gw.example:", malformed: true},
		{host: "app.gw.example:65536", malformed: true},
		{host: "app.gw.example:+80", malformed: true},
		{host: "app.gw.example:-1", malformed: true},
		{host: "app.gw.example: 80", malformed: true},
		{host: "app.gw.example:8_0", malformed: true},
		{host: "app.gw.example:0x50", malformed: true},
		{host: "app.gw.example::1", malformed: true},
		{host: "app.gw.example:80:80", malformed: true},
		{host: "evil.com:abc", malformed: true},
		{host: "[::1]:80"},
		{host: "[::1]:abc"},
		{host: "gw.example"},
		{host: "x.app.gw.example"},
		{host: "app.gw.example.evil"},
		{host: "app_1.gw.example"},
		{host: ""},
		{host: "127.0.0.1:80"},
	} {
		name, fwd, err := SplitHost("gw.example", tc.host)
		if tc.malformed {
			if !errors.Is(err, ErrMalformedHost) || name != "" || fwd != "" {
				t.Errorf("SplitHost(%q) = %q, %q, %v; want ErrMalformedHost", tc.host, name, fwd, err)
			}
			continue
		}
		if err != nil || name != tc.name || fwd != tc.forwarded {
			t.Errorf("SplitHost(%q) = %q, %q, %v; want %q, %q", tc.host, name, fwd, err, tc.name, tc.forwarded)
		}
	}
}

// TestSplitHostAllocs: a host as browsers and load tools send it (lower
// case, no trailing dot) is routed with no allocation, port or not; one
// that must be rewritten may allocate its rewrite.
func TestSplitHostAllocs(t *testing.T) {
	for _, host := range []string{"app.gw.example", "app.gw.example:8443"} {
		if n := testing.AllocsPerRun(100, func() {
			if name, fwd, _ := SplitHost("gw.example", host); name != "app" || fwd != host {
				t.Fatalf("SplitHost(%q) = %q, %q", host, name, fwd)
			}
		}); n != 0 {
			t.Errorf("SplitHost(%q): %.0f allocations, want none", host, n)
		}
	}
}

func BenchmarkSplitHost(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		SplitHost("gw.example", "app.gw.example")
	}
}

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

func TestRouteFurtherHosts(t *testing.T) {
	t.Parallel()
	s, _ := newServer(t, Config{Domain: "gw.test", Hosts: Hosts{"www.example.org": "web"}})
	for _, tc := range []struct {
		host, name, forwarded string
		err                   error
	}{
		{"web.gw.test", "web", "web.gw.test", nil},
		{"www.example.org", "web", "www.example.org", nil},
		{"WWW.Example.ORG.:8443", "web", "www.example.org:8443", nil},
		{"example.org", "", "", nil},
		{"www.example.org:x", "", "", ErrMalformedHost},
		{"[::1]:80", "", "", nil},
	} {
		name, fwd, err := s.Route(tc.host)
		if name != tc.name || fwd != tc.forwarded || !errors.Is(err, tc.err) {
			t.Errorf("Route(%q) = %q, %q, %v; want %q, %q, %v", tc.host, name, fwd, err, tc.name, tc.forwarded, tc.err)
		}
	}
	// A reload replaces the hosts whole.
	if err := s.SetHosts(Hosts{"api.example.org": "api"}); err != nil {
		t.Fatal(err)
	}
	if name, _, _ := s.Route("www.example.org"); name != "" {
		t.Errorf("a host dropped by SetHosts still routes to %q", name)
	}
	if name, _, _ := s.Route("api.example.org"); name != "api" {
		t.Errorf("a host added by SetHosts routes to %q", name)
	}
	if got := s.HostsOf("api"); len(got) != 1 || got[0] != "api.example.org" {
		t.Errorf("HostsOf(api) = %v", got)
	}
	// Bad hosts are refused whole, and the hosts in force stay.
	for _, bad := range []Hosts{
		{"x.gw.test": "web"},       // under the domain
		{"localhost": "web"},       // one label
		{"www.Example.org": "web"}, // not lower case
		{"www.example.org": "Web"}, // not a tunnel name
		{"www.example.org": "web", "a..b": "web"},
	} {
		if err := s.SetHosts(bad); err == nil {
			t.Errorf("SetHosts(%v) accepted", bad)
		}
	}
	if name, _, _ := s.Route("api.example.org"); name != "api" {
		t.Errorf("a refused SetHosts changed the hosts in force")
	}
}

// TestSessionContextOnDemand: a session's member context is made by the
// first Context call (an idle session holds none) and ends when the
// session leaves its tunnels, before or after that call.
func TestSessionContextOnDemand(t *testing.T) {
	srv := &Server{ctx: t.Context()}
	idle := &session{srv: srv}
	idle.leave()
	if idle.member != nil {
		t.Error("a session never asked for its context made one")
	}
	if err := idle.Context().Err(); err == nil {
		t.Error("the context of a session that left is not done")
	}

	ss := &session{srv: srv}
	ctx := ss.Context()
	if ctx.Err() != nil || ss.Context() != ctx {
		t.Fatalf("context of a live session: %v, same %v", ctx.Err(), ss.Context() == ctx)
	}
	ss.leave()
	select {
	case <-ctx.Done():
	default:
		t.Error("the context did not end when the session left")
	}
}

// TestNoRulesPolicyShared: tunnels without visitor rules share one policy
// per kind, which says what their registration asked for.
func TestNoRulesPolicyShared(t *testing.T) {
	for _, req := range []protocol.Register{{}, {H2C: true}, {UDP: true}, {H2C: true, UDP: true}} {
		p1, err1 := newVisitorPolicy(&req)
		p2, err2 := newVisitorPolicy(&req)
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if p1 != p2 {
			t.Errorf("%+v: two policies made for no rules", req)
		}
		if p1.h2c != req.H2C || p1.udp != req.UDP || p1.user != "" || len(p1.allow) != 0 || !p1.allows(netip.MustParseAddr("192.0.2.1")) {
			t.Errorf("%+v: policy %+v", req, p1)
		}
	}
	withRules := protocol.Register{AllowIPs: []string{"192.0.2.0/24"}}
	p, err := newVisitorPolicy(&withRules)
	if err != nil {
		t.Fatal(err)
	}
	if q, _ := newVisitorPolicy(&withRules); p == q || p == &noRules[0][0] {
		t.Error("a policy with rules is shared")
	}
	if p.allows(netip.MustParseAddr("198.51.100.1")) {
		t.Error("a policy with allowed IPs lets others in")
	}
}
