package ingress

import (
	"bufio"
	"context"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/diglett/diglett/gateway"
)

// TestClientClaimHeaders is the list of headers dropped from visitors that
// are not trusted proxies, as the README gives it.
func TestClientClaimHeaders(t *testing.T) {
	t.Parallel()
	for name, drop := range map[string]bool{
		"Forwarded":            true,
		"X-Forwarded-For":      true,
		"X-Forwarded-Host":     true,
		"X-Forwarded-Proto":    true,
		"X-Forwarded-Port":     true,
		"X-Forwarded-Prefix":   true,
		"X-Forwarded-Ssl":      true,
		"X-Forwarded-Scheme":   true,
		"X-Forwarded-Server":   true,
		"X-Forwarded-Uri":      true,
		"X-Forwarded-Whatever": true,
		"X-Forwarded":          true,
		"X-Real-Ip":            true,
		"True-Client-Ip":       true,
		"X-Client-Ip":          true,
		"Client-Ip":            true,
		"X-Cluster-Client-Ip":  true,
		"X-Originating-Ip":     true,
		"X-Remote-Ip":          true,
		"X-Remote-Addr":        true,
		"X-Host":               true,
		"X-Original-Url":       true,
		"X-Rewrite-Url":        true,
		// The same with '_' for '-', in any case.
		"X_forwarded_for":  true,
		"x_FORWARDED_host": true,
		"X-Forwarded_Port": true,
		"X_real_ip":        true,
		"True_client_ip":   true,
		"X_original_url":   true,
		"Client_ip":        true,
		"X_forwarded":      true,
		// Kept.
		"X-Forwardedx":      false,
		"X-Forwarder":       false,
		"Forwarded-For":     false,
		"X-Real-Ip-Extra":   false,
		"Client-Ip2":        false,
		"X-Hostname":        false,
		"Host":              false,
		"X-Request-Id":      false,
		"Authorization":     false,
		"Cookie":            false,
		"X-Original-Method": false,
		"":                  false,
	} {
		if got := isClientClaim(name); got != drop {
			t.Errorf("isClientClaim(%q) = %v, want %v", name, got, drop)
		}
	}
}

func TestDropClientClaims(t *testing.T) {
	t.Parallel()
	h := http.Header{
		"X-Forwarded-Port": {"1"},
		"X_forwarded_for":  {"203.0.113.1"},
		"X-Real-Ip":        {"203.0.113.1"},
		"X-Request-Id":     {"abc"},
		"Accept":           {"*/*"},
	}
	dropClientClaims(h)
	var left []string
	for k := range h {
		left = append(left, k)
	}
	slices.Sort(left)
	if !slices.Equal(left, []string{"Accept", "X-Request-Id"}) {
		t.Fatalf("left %v", left)
	}
}

func TestStripH2CUpgrade(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name                    string
		in                      http.Header
		upgrade, conn, settings string
	}{
		{"h2c", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"h2c"}, "Http2-Settings": {"AAMAAABk"}}, "", "", ""},
		{"H2C", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"H2C"}}, "", "", ""},
		{"h2c and another", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"h2c, websocket"}}, "websocket", "Upgrade", ""},
		{"websocket", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}, "websocket", "Upgrade", ""},
		{"settings alone", http.Header{"Http2-Settings": {"AAMAAABk"}}, "", "", ""},
		{"no upgrade", http.Header{"Connection": {"keep-alive"}}, "", "keep-alive", ""},
	} {
		stripH2CUpgrade(tc.in)
		if got := [3]string{tc.in.Get("Upgrade"), tc.in.Get("Connection"), tc.in.Get("Http2-Settings")}; got != [3]string{tc.upgrade, tc.conn, tc.settings} {
			t.Errorf("%s: Upgrade, Connection, HTTP2-Settings = %q", tc.name, got)
		}
	}
}

// basicRules is a tunnel's rules with a password.
type basicRules struct{ gateway.VisitorRules }

func (basicRules) BasicAuth() bool { return true }

// headFields is the multiset of a head's fields, one "Name: value" per
// line after the request line.
func headFields(t *testing.T, head []byte) []string {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(string(head), "\r\n\r\n"), "\r\n")
	fields := lines[1:]
	slices.Sort(fields)
	return fields
}

// fast.go's head, with the forwarded fields written straight into it, has
// the fields of the reverse proxy's rewrite of the map (setForwarded), for
// trusted and untrusted peers, claims, hop-by-hop fields and a password,
// and on a connection whose later requests reuse the gateway's part.
func TestRequestHeadAsSetForwarded(t *testing.T) {
	in := &Server{cfg: Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}}
	heads := []string{
		"GET / HTTP/1.1\r\nHost: web.gw.test\r\nUser-Agent: x\r\n\r\n",
		"GET /a?b=c HTTP/1.1\r\nHost: web.gw.test\r\nX-Forwarded-For: 1.2.3.4\r\nForwarded: for=1.2.3.4\r\nX-Forwarded-Proto: https\r\nX-Real-Ip: 5.6.7.8\r\nX-Forwarded-Port: 1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: web.gw.test\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nTe: trailers\r\nKeep-Alive: 5\r\nAuthorization: Basic dTpw\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: web.gw.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHttp2-Settings: AAA\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: web.gw.test\r\nContent-Length: 3\r\nX-Forwarded-Host: evil\r\n\r\n",
	}
	var own forwardedOwn
	for _, peer := range []string{"192.0.2.1", "10.1.2.3", "2001:db8::1", "192.0.2.1"} {
		for _, host := range []string{"web.gw.test", "other.gw.test"} {
			for _, https := range []bool{false, true} {
				for _, pol := range []gateway.VisitorRules{h2cRules{}, basicRules{}} {
					for _, head := range heads {
						read := func() *http.Request {
							r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(head)))
							if err != nil {
								t.Fatal(err)
							}
							return r
						}
						rt := &route{pol: pol, https: https, peer: netip.MustParseAddr(peer), host: host}
						r := read()
						want := r.Clone(context.Background())
						fv := in.forwardedFrom(want.Header, rt)
						te := httpgutsTrailers(want.Header["Te"])
						removeHopHeaders(want.Header)
						for _, k := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Content-Length"} {
							delete(want.Header, k)
						}
						if te {
							want.Header["Te"] = []string{"trailers"}
						}
						setForwarded(want.Header, rt, fv)
						wantFields := headFields(t, appendRequestHead(nil, want, rt, nil))
						got := headFields(t, in.requestHead(nil, r, rt, &own))
						if !slices.Equal(got, wantFields) {
							t.Fatalf("peer %s host %s https %v pol %T head %q:\n got %q\nwant %q", peer, host, https, pol, head, got, wantFields)
						}
					}
				}
			}
		}
	}
}

// The head for the backend, rewritten with the forwarded fields written
// into it, against the same fields set in the map first.
func BenchmarkRequestHead(b *testing.B) {
	in := &Server{}
	head := "GET /index.html HTTP/1.1\r\nHost: web.gw.test\r\nUser-Agent: load/1\r\nAccept: */*\r\n\r\n"
	rt := &route{pol: h2cRules{}, peer: netip.MustParseAddr("127.0.0.1"), host: "web.gw.test"}
	buf := make([]byte, 0, 1<<10)
	b.Run("in-head", func(b *testing.B) {
		b.ReportAllocs()
		var own forwardedOwn
		for b.Loop() {
			r, _ := parseRequest([]byte(head))
			buf = in.requestHead(buf[:0], r, rt, &own)
		}
	})
	b.Run("in-map", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r, _ := parseRequest([]byte(head))
			fv := in.forwardedFrom(r.Header, rt)
			removeHopHeaders(r.Header)
			for _, k := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Content-Length"} {
				delete(r.Header, k)
			}
			setForwarded(r.Header, rt, fv)
			buf = appendRequestHead(buf[:0], r, rt, nil)
		}
	})
}
