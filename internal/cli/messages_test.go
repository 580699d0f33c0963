package cli

import (
	"bytes"
	"strings"
	"testing"
)

// The variable the help names is the one read.
func TestEnvironmentNameWithDigit(t *testing.T) {
	t.Setenv("DIGLETT_H2C", "true")
	var c agentCmd
	var out, errOut bytes.Buffer
	if err := Parse(&c, "diglett", "", []string{"-g", "gw", "-n", "a", "9000"}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if !c.H2C {
		t.Error("DIGLETT_H2C=true did not set --h2c")
	}
}

func TestCamelWordsMatchesKong(t *testing.T) {
	for in, want := range map[string]string{"h2c": "h 2 c", "max-idle-timeout": "max idle timeout", "ipv6-only": "ipv 6 only", "acme-ca": "acme ca"} {
		if got := strings.Join(camelWords(in), " "); got != want {
			t.Errorf("camelWords(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestGatewayAddr(t *testing.T) {
	for in, want := range map[string]string{
		"gateway.com":       "gateway.com:20000",
		"gateway.com:443":   "gateway.com:443",
		"10.0.0.1":          "10.0.0.1:20000",
		"::1":               "[::1]:20000",
		"[2001:db8::1]":     "[2001:db8::1]:20000",
		"[2001:db8::1]:100": "[2001:db8::1]:100",
	} {
		if got, err := gatewayAddr(in); err != nil || got != want {
			t.Errorf("gatewayAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "a:b:c", "http://gateway.com"} {
		if got, err := gatewayAddr(bad); err == nil {
			t.Errorf("gatewayAddr(%q) = %q, want an error", bad, got)
		}
	}
}

func TestBackendURLs(t *testing.T) {
	for in, want := range map[string]string{
		"http://localhost:9000":       "localhost:9000",
		"http://localhost:9000/":      "localhost:9000",
		"HTTP://127.0.0.1:8080/app":   "127.0.0.1:8080",
		"http://localhost":            "localhost:80",
		"http://[::1]:9000":           "[::1]:9000",
		"localhost:9000":              "localhost:9000",
		"9000":                        "localhost:9000",
		"http://backend.internal:300": "backend.internal:300",
	} {
		if got, err := backendAddr(in); err != nil || got != want {
			t.Errorf("backendAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"https://localhost:9443": "does not speak TLS to its backend",
		"ftp://localhost:21":     "want HOST:PORT or http://HOST:PORT",
		"http://":                "want HOST:PORT",
	} {
		if _, err := backendAddr(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("backendAddr(%q): err = %v, want %q", in, err, want)
		}
	}
}
