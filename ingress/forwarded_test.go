package ingress

import (
	"net/http"
	"slices"
	"testing"
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
