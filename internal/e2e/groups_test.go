package e2e

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diglett/diglett/internal/autotls/pebbletest"
)

// TestTunnelGroup runs a gateway from a file with a tunnel group: its
// own tokens let two agents join it, its further host gets a certificate
// from a real ACME server and serves the group, and nobody else may
// publish its name.
func TestTunnelGroup(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	write := func(name, content string) string { return writeFile(t, dir, name, content) }
	httpAddr, httpsAddr := freeAddr(t), freeAddr(t)
	p := pebbletest.Start(t, addrPort(t, httpAddr), addrPort(t, httpsAddr))
	t.Cleanup(p.CloseClientConnections)
	lo, hi := randomPortWindow()
	write("tokens.yaml", "- token: alice-secret\n  identity: alice\n  names: ['*']\n")
	write("web-tokens.yaml", "- token: deploy-1\n  identity: deployer-1\n  names: [web]\n- token: deploy-2\n  identity: deployer-2\n  names: [web]\n")
	gw := write("gateway.yaml", fmt.Sprintf(`version: 1
listen: 127.0.0.1:0
data_dir: state
ports: %d-%d
public_bind: 127.0.0.1
domain: %s
http_addr: %s
https_addr: %s
acme_ca: %s
acme_ca_root: %s
acme_email: ops@example.com
auth:
  - tokens: {file: tokens.yaml}
groups:
  - name: web
    hosts: [www.example.test]
    auth:
      - tokens: {file: web-tokens.yaml}
`, lo, hi, testDomain, httpAddr, httpsAddr, p.DirectoryURL, p.RootCAFile))
	srv := startServerCommand(t, "--config", gw)
	agent := func(token, name, backend string) *agentCommand {
		return startAgentCommand(t, "-g", srv.Addr, "-n", name, "-t", token, "--fingerprint", srv.Fingerprint,
			"--known-gateways", filepath.Join(dir, "known_gateways"), "--transport", "tcp", backend)
	}

	// Two agents, with two different tokens of the group, serve it
	// together.
	a1 := agent("deploy-1", "web", nameBackend(t, "one"))
	a1.tunnel(t, "web")
	a2 := agent("deploy-2", "web", nameBackend(t, "two"))
	a2.tunnel(t, "web")

	g := &testGateway{HTTPAddr: httpAddr, HTTPSAddr: httpsAddr, CA: p.IssuerRoots(t)}
	c := g.httpClient(t)
	seen := map[string]bool{}
	for i := 0; i < 40 && len(seen) < 2; i++ {
		code, body := get(t, c, "https://www.example.test/")
		if code != http.StatusOK {
			t.Fatalf("https://www.example.test/: status %d, body %q", code, body)
		}
		seen[body] = true
	}
	if !seen["one"] || !seen["two"] {
		t.Errorf("the group's host reached %v, want both members", seen)
	}
	if code, body := get(t, c, "http://www.example.test/"); code != http.StatusOK {
		t.Errorf("http://www.example.test/: status %d, body %q", code, body)
	}
	if code, _ := get(t, c, "https://web."+testDomain+"/"); code != http.StatusOK {
		t.Errorf("the group's own NAME.DOMAIN: status %d", code)
	}
	// The further host has a certificate of its own, from the CA.
	conn, err := tls.Dial("tcp", httpsAddr, &tls.Config{ServerName: "www.example.test", RootCAs: p.IssuerRoots(t)})
	if err != nil {
		t.Fatalf("TLS to the group's host: %v", err)
	}
	if err := conn.VerifyHostname("www.example.test"); err != nil {
		t.Errorf("certificate: %v", err)
	}
	conn.Close()
	if resp, err := c.Get("https://other.example.test/"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("a host of no group: status %d, want 404 or no certificate", resp.StatusCode)
		}
	}

	// Alice may publish any name, but not the group's; a wrong group
	// token is refused with the reason; a member may publish nothing
	// else.
	refused := func(token, name string) error {
		return refusedAgent(t, []string{"-g", srv.Addr, "-n", name, "-t", token, "--fingerprint", srv.Fingerprint,
			"--known-gateways", filepath.Join(dir, "known_gateways"), "--transport", "tcp", "127.0.0.1:9"})
	}
	if err := refused("alice-secret", "web"); err == nil || !strings.Contains(err.Error(), `"web" is a tunnel group's`) {
		t.Errorf("alice publishing the group's name: %v", err)
	}
	if err := refused("deploy-3", "web"); err == nil || !strings.Contains(err.Error(), "login refused by the gateway: unknown token") {
		t.Errorf("a wrong group token: %v", err)
	}
	if err := refused("deploy-1", "other"); err == nil || !strings.Contains(err.Error(), "unknown token") {
		t.Errorf("a group token publishing another name: %v", err)
	}
	a1.stop()
	a2.stop()
	srv.stop()
}
