package cli

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAgentArgumentErrors(t *testing.T) {
	kg := filepath.Join(t.TempDir(), "kg")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no gateway", []string{"-n", "x", "localhost:1"}, "--gateway"},
		{"no name", []string{"-g", "127.0.0.1:1", "localhost:1"}, "--name"},
		{"no backend", []string{"-g", "127.0.0.1:1", "-n", "x"}, "backend"},
		{"bad backend", []string{"-g", "127.0.0.1:1", "-n", "x", "localhost"}, "HOST:PORT"},
		{"bad backend port", []string{"-g", "127.0.0.1:1", "-n", "x", "localhost:99999"}, "bad port"},
		{"bad name", []string{"-g", "127.0.0.1:1", "-n", "Not_A_Name", "--known-gateways", kg, "1"}, "Not_A_Name"},
		{"bad gateway", []string{"-g", "gw:1:2", "-n", "x", "--known-gateways", kg, "1"}, "HOST:PORT"},
		{"bad fingerprint", []string{"-g", "127.0.0.1:1", "-n", "x", "--fingerprint", "abc", "--known-gateways", kg, "1"}, "fingerprint"},
		{"missing ca", []string{"-g", "127.0.0.1:1", "-n", "x", "--ca", "/nonexistent/ca.pem", "1"}, "ca"},
		{"gateway down", []string{"-g", "127.0.0.1:1", "-n", "x", "--known-gateways", kg, "1"}, "dial gateway"},
		{"bad basic auth", []string{"-g", "127.0.0.1:1", "-n", "x", "--basic-auth", "nopassword", "--known-gateways", kg, "1"}, "user:password"},
		{"bad allow-ips", []string{"-g", "127.0.0.1:1", "-n", "x", "--allow-ips", "10.0.0.0/8,lan", "--known-gateways", kg, "1"}, "lan"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var out, errOut bytes.Buffer
			err := Agent(ctx, tt.args, &out, &errOut)
			if err == nil || IsHelp(err) {
				t.Fatalf("err = %v", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}

func TestEnvironmentSetsFlags(t *testing.T) {
	var c agentCmd
	t.Setenv("DIGLETT_GATEWAY", "gw.example:20000")
	t.Setenv("DIGLETT_NAME", "example")
	t.Setenv("DIGLETT_TOKEN", "s3cret")
	t.Setenv("DIGLETT_PORT", "30001")
	var out, errOut bytes.Buffer
	if err := Parse(&c, "diglett", "", []string{"localhost:9000"}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.Gateway, ",") != "gw.example:20000" || len(c.Name) != 1 || c.Name[0] != "example" || c.Token != "s3cret" || c.Port != 30001 {
		t.Fatalf("parsed %+v", c)
	}
	// Flags win over the environment.
	c = agentCmd{}
	if err := Parse(&c, "diglett", "", []string{"-g", "other:1", "-n", "a", "-n", "b", "-dd", "9000"}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.Gateway, ",") != "other:1" || strings.Join(c.Name, ",") != "a,b" || c.Debug != 2 {
		t.Fatalf("parsed %+v", c)
	}
}

func TestBackendAddr(t *testing.T) {
	for in, want := range map[string]string{"9000": "localhost:9000", "localhost:9000": "localhost:9000", ":9000": "localhost:9000", "10.0.0.2:80": "10.0.0.2:80"} {
		got, err := backendAddr(in)
		if err != nil || got != want {
			t.Errorf("backendAddr(%q) = %q, %v", in, got, err)
		}
	}
}
