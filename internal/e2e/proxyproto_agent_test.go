package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil/nginxtest"
)

// ppVisitor is the loopback address the PROXY protocol tests' visitors
// connect from: not the 127.0.0.1 of every local connection, so a backend
// logging it was told, not guessed.
const ppVisitor = "127.0.0.7"

// startPPNginx runs nginx with an HTTP server reading a PROXY protocol
// header on each connection and logging the address in it
// ($proxy_protocol_addr and _port) to access.log.
func startPPNginx(t *testing.T) *nginxtest.Server {
	return nginxtest.Start(t, func(port int, dir string) string {
		return fmt.Sprintf(`http {
	log_format pp 'pp=$proxy_protocol_addr:$proxy_protocol_port "$request" $status';
	access_log %s pp;
	server {
		listen 127.0.0.1:%d proxy_protocol;
		location / {
			return 200 "nginx saw $proxy_protocol_addr\n";
		}
	}
}`, filepath.Join(dir, "access.log"), port)
	})
}

// ppGet sends a GET of path with host to addr from ppVisitor and returns
// the response's body and the visitor's port.
func ppGet(t *testing.T, addr, host, path string) (body string, port int) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ppVisitor)}, Timeout: eventually}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("visitor dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(eventually))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, host)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET %s from %s: %v", path, addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s from %s: %s %q %v", path, addr, resp.Status, b, err)
	}
	return string(b), c.LocalAddr().(*net.TCPAddr).Port
}

// TestAgentProxyProtocolNginx runs the gateway and agent commands with an
// nginx backend that requires a PROXY protocol header: with
// --proxy-protocol v1, and with proxy_protocol: v2 on a tunnel of the
// agent's file, nginx logs the visitor's own address and port for a
// visitor of the tunnel's TCP port, and the visitor's address for one
// coming through the HTTP ingress by Host; a replay from the agent's
// request inspector carries a header without addresses.
func TestAgentProxyProtocolNginx(t *testing.T) {
	parallel(t)
	ngx := startPPNginx(t)
	dir := t.TempDir()
	lo, hi := randomPortWindow()
	httpAddr := freeAddr(t)
	srv := startServerCommand(t, "-l", "127.0.0.1:0", "--data-dir", filepath.Join(dir, "data"),
		"--ports", fmt.Sprintf("%d-%d", lo, hi), "--public-bind", "127.0.0.1",
		"--domain", testDomain, "--http-addr", httpAddr)
	agentFile := writeFile(t, dir, "agent.yaml", fmt.Sprintf(`version: 1
gateway: [%s]
fingerprint: %s
known_gateways: known_gateways
transport: tcp
tunnels:
  - {name: ppfile, backend: %q, proxy_protocol: v2}
`, srv.Addr, srv.Fingerprint, ngx.Addr))

	for _, tc := range []struct {
		name, version string
		inspect       bool // the agent runs the request inspector
		args          []string
	}{
		{"ppflag", "v1", true, []string{"-g", srv.Addr, "--fingerprint", srv.Fingerprint, "--known-gateways", filepath.Join(dir, "kg"),
			"--transport", "tcp", "-n", "ppflag", "--proxy-protocol", "v1", "--inspect", "127.0.0.1:0", ngx.Addr}},
		{"ppfile", "v2", false, []string{"--config", agentFile}},
	} {
		t.Run(tc.version, func(t *testing.T) {
			a := startAgentCommand(t, tc.args...)
			public := a.tunnel(t, tc.name)

			path := "/tcp-" + tc.version
			body, port := ppGet(t, public, "anything", path)
			if want := "nginx saw " + ppVisitor + "\n"; body != want {
				t.Errorf("nginx answered %q; want %q", body, want)
			}
			ngx.WaitFile(t, "access.log", fmt.Sprintf(`pp=%s:%d "GET %s HTTP/1.1" 200`, ppVisitor, port, path))
			if tc.inspect {
				// A replay comes from the agent: its header has no
				// address, and nginx takes it.
				m := inspectLine.FindStringSubmatch(a.stdout.String())
				if m == nil {
					t.Fatalf("the agent did not print the inspector's address:\n%s", &a.stdout)
				}
				list := waitRequests(t, m[1], 1)
				postReplay(t, m[1], list[0].ID, http.StatusOK)
				ngx.WaitFile(t, "access.log", fmt.Sprintf(`pp=-:- "GET %s HTTP/1.1" 200`, path))
			}

			// By Host: the ingress's stream to the agent starts with this
			// visitor's request, so the header carries its address.
			path = "/host-" + tc.version
			body, _ = ppGet(t, httpAddr, tc.name+"."+testDomain, path)
			if want := "nginx saw " + ppVisitor + "\n"; body != want {
				t.Errorf("by Host: nginx answered %q; want %q", body, want)
			}
			log := ngx.WaitFile(t, "access.log", fmt.Sprintf(`"GET %s HTTP/1.1" 200`, path))
			for _, line := range strings.Split(log, "\n") {
				if strings.Contains(line, path) && !strings.HasPrefix(line, "pp="+ppVisitor+":") {
					t.Errorf("by Host: nginx logged %q; want the visitor's address %s", line, ppVisitor)
				}
			}
			if err := a.stop(); err != nil {
				t.Errorf("agent command: %v", err)
			}
		})
	}
	t.Logf("nginx access log:\n%s", ngx.File(t, "access.log"))
	if log := ngx.File(t, "error.log"); strings.Contains(log, "broken header") {
		t.Errorf("nginx refused a PROXY protocol header:\n%s", log)
	}
	srv.stop()
}
