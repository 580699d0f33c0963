package e2e

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startGreeter starts a backend that writes greeting to each visitor and
// closes; it returns its address.
func startGreeter(t *testing.T, greeting string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveBackend(t, ln, func(c *net.TCPConn) { io.WriteString(c, greeting) })
	return ln.Addr().String()
}

// TestConfigFileCommands runs both commands from configuration files: a
// gateway whose tokens module and log registerer come from its file, and
// one agent process serving three tunnels to three backends, two of them
// on one listener (dispatched by name) and one with its own options.
func TestConfigFileCommands(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	write := func(name, content string) string { return writeFile(t, dir, name, content) }
	lo, hi := randomPortWindow()
	write("tokens.yaml", "- token: s3cret\n  identity: alice\n  names: [web, www, api]\n")
	gw := write("gateway.yaml", fmt.Sprintf(`version: 1
listen: 127.0.0.1:0
data_dir: state
ports: %d-%d
public_bind: 127.0.0.1
lease: 2s
auth:
  - tokens: {file: tokens.yaml}
register:
  - log: {}
`, lo, hi))
	srv := startServerCommand(t, "--config", gw)
	if strings.Contains(srv.stderr.String(), "ANYONE") {
		t.Errorf("gateway with a tokens module warned of allow-all:\n%s", &srv.stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "state", "gateway.key")); err != nil {
		t.Errorf("data_dir not taken from the file's directory: %v", err)
	}

	backends := map[string]string{"web": startGreeter(t, "web"), "www": startGreeter(t, "www"), "api": startGreeter(t, "api")}
	ag := write("agent.yaml", fmt.Sprintf(`version: 1
gateway: [%s]
token: s3cret
fingerprint: %s
known_gateways: known_gateways
transport: tcp
tunnels:
  - {name: web, backend: %q}
  - {name: api, backend: %q, h2c: true}
  - {name: www, backend: %q}
`, srv.Addr, srv.Fingerprint, backends["web"], backends["api"], backends["www"]))
	a := startAgentCommand(t, "--config", ag)
	for _, name := range []string{"web", "www", "api"} {
		public := a.tunnel(t, name)
		waitFor(t, "server log", &srv.stderr, "register domain '"+name+"'")
		if !strings.Contains(a.stdout.String(), " -> "+backends[name]+"\n") {
			t.Errorf("agent did not print %s's backend %s:\n%s", name, backends[name], &a.stdout)
		}
		c, err := net.DialTimeout("tcp", public, eventually)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(eventually))
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(got) != name {
			t.Errorf("tunnel %s reached %q (%v), want its own backend", name, got, err)
		}
	}
	if err := a.stop(); err != nil {
		t.Fatalf("agent command: %v", err)
	}
	srv.stop()
}
