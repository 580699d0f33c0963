package servercli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diglett/diglett/internal/cli"
)

func TestHelpListsEveryFlag(t *testing.T) {
	for _, tc := range []struct {
		name  string
		run   func(context.Context, []string, *bytes.Buffer, *bytes.Buffer) error
		flags []string
	}{
		{"server", func(ctx context.Context, a []string, o, e *bytes.Buffer) error { return Server(ctx, a, o, e) },
			[]string{"--listen", "--debug", "--data-dir", "--ports", "--public-bind", "--tokens", "--lease", "--cert", "--key", "--keep-alive-period", "--max-idle-timeout", "quic", "DIGLETT_LISTEN",
				"--domain", "--http-addr", "--https-addr", "--trusted-proxies", "--http-response-timeout", "--acme-email", "--acme-ca", "--acme-staging", "--acme-ca-root", "--visitor-access"}},
		{"agent", func(ctx context.Context, a []string, o, e *bytes.Buffer) error { return cli.Agent(ctx, a, o, e) },
			[]string{"--gateway", "--name", "--token", "--debug", "--port", "--fingerprint", "--ca", "--known-gateways", "--keep-alive-period", "--max-idle-timeout", "--transport", "--connections", "--ws-addr", "--proxy", "DIGLETT_GATEWAY", "<backend>",
				"--basic-auth", "--allow-ips", "--h2c"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := tc.run(context.Background(), []string{"--help"}, &out, &errOut)
			if !cli.IsHelp(err) {
				t.Fatalf("--help: err = %v", err)
			}
			for _, f := range tc.flags {
				if !strings.Contains(out.String(), f) {
					t.Errorf("help does not mention %s:\n%s", f, out.String())
				}
			}
			if strings.Contains(out.String(), "insecure") {
				t.Error("help offers an insecure mode")
			}
		})
	}
}

func TestServerArgumentErrors(t *testing.T) {
	dir := t.TempDir()
	badTokens := filepath.Join(dir, "tokens.yaml")
	os.WriteFile(badTokens, []byte("- token: \"\"\n  names: [a]\n"), 0o600)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"bad ports", []string{"--ports", "40000-30000"}, "--ports"},
		{"ports not numbers", []string{"--ports", "a-b"}, "--ports"},
		{"missing tokens file", []string{"--tokens", filepath.Join(dir, "none.yaml")}, "none.yaml"},
		{"bad tokens file", []string{"--tokens", badTokens}, "empty token"},
		{"cert without key", []string{"--cert", badTokens}, "--key"},
		{"bad listen", []string{"-l", "nonsense"}, "listen"},
		{"bad lease", []string{"--lease", "soon"}, "lease"},
		{"http without domain", []string{"--http-addr", ":8080"}, "--domain"},
		{"acme without domain", []string{"--acme-email", "a@example.com"}, "--domain"},
		{"bad domain", []string{"--domain", "not a domain", "--http-addr", "127.0.0.1:0"}, "domain"},
		{"https without certificate", []string{"--domain", "gw.example", "--https-addr", "127.0.0.1:0"}, "certificate"},
		{"acme and cert", []string{"--domain", "gw.example", "--acme-email", "a@example.com", "--cert", badTokens, "--key", badTokens}, "exclusive"},
		{"bad visitor access", []string{"--visitor-access", "maybe"}, "visitor-access"},
		{"bad trusted proxy", []string{"--trusted-proxies", "10.0.0.0/8,nonsense"}, "--trusted-proxies"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			args := append([]string{"--data-dir", filepath.Join(dir, "data")}, tt.args...)
			err := Server(context.Background(), args, &out, &errOut)
			if err == nil || cli.IsHelp(err) {
				t.Fatalf("err = %v", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}

func TestParsePorts(t *testing.T) {
	for in, want := range map[string][2]int{"30000-40000": {30000, 40000}, "5000": {5000, 5000}, " 1 - 2 ": {1, 2}} {
		lo, hi, err := parsePorts(in)
		if err != nil || lo != want[0] || hi != want[1] {
			t.Errorf("parsePorts(%q) = %d, %d, %v", in, lo, hi, err)
		}
	}
	for _, bad := range []string{"", "0-10", "10-5", "1-70000", "x", "1-2-3"} {
		if _, _, err := parsePorts(bad); err == nil {
			t.Errorf("parsePorts(%q) accepted", bad)
		}
	}
}
