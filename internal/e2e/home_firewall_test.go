//go:build linux

package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

// hostPair is a network namespace playing the gateway's host, with a
// host firewall that drops what it does not allow, and a peer namespace
// on a link to it playing a visitor.
type hostPair struct {
	ip, nft, curl string
	host, peer    string
	hostAddr      string // the host's address on the link
}

func newHostPair(t *testing.T) *hostPair {
	t.Helper()
	if os.Geteuid() != 0 {
		testutil.Unavailable(t, "needs root for network namespaces")
	}
	h := &hostPair{ip: testutil.Program(t, "ip"), nft: testutil.Program(t, "nft"), curl: testutil.Program(t, "curl")}
	b := make([]byte, 3)
	rand.Read(b)
	id := fmt.Sprintf("%x", b)
	h.host, h.peer = "dgfH"+id, "dgfP"+id
	x, y := int(b[0])%200+20, int(b[1])%250+1
	h.hostAddr = fmt.Sprintf("10.%d.%d.1", x, y)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(h.ip, args...).CombinedOutput(); err != nil {
			testutil.Unavailable(t, "ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", h.host)
	t.Cleanup(func() { exec.Command(h.ip, "netns", "del", h.host).Run() })
	run("netns", "add", h.peer)
	t.Cleanup(func() { exec.Command(h.ip, "netns", "del", h.peer).Run() })
	run("-n", h.host, "link", "add", "dgf", "type", "veth", "peer", "name", "dgfp", "netns", h.peer)
	run("-n", h.host, "addr", "add", h.hostAddr+"/24", "dev", "dgf")
	run("-n", h.peer, "addr", "add", fmt.Sprintf("10.%d.%d.2/24", x, y), "dev", "dgfp")
	for _, ns := range []string{h.host, h.peer} {
		run("-n", ns, "link", "set", "lo", "up")
	}
	run("-n", h.host, "link", "set", "dgf", "up")
	run("-n", h.peer, "link", "set", "dgfp", "up")
	rules := filepath.Join(t.TempDir(), "host.nft")
	if err := os.WriteFile(rules, []byte(`table inet filter {
	chain input {
		type filter hook input priority filter; policy drop;
		iif lo accept
		ct state established,related accept
	}
}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	h.inHost(t, h.nft, "-f", rules)
	return h
}

// inHost runs a program in the host namespace and returns its output.
func (h *hostPair) inHost(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), eventually)
	defer cancel()
	out, err := exec.CommandContext(ctx, h.ip, append([]string{"netns", "exec", h.host}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// visit fetches url from the peer namespace: its body, or curl's error
// (exit 28 is a timeout: the firewall dropped it).
func (h *hostPair) visit(url, host string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), eventually)
	defer cancel()
	out, err := exec.CommandContext(ctx, h.ip, "netns", "exec", h.peer, h.curl, "-sS", "--connect-timeout", "2",
		"--max-time", "5", "-H", "Host: "+host, url).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("curl %s: %v: %s", url, err, out)
	}
	return string(out), nil
}

// A gateway with a firewall section, on a host whose firewall drops what
// it does not allow: its own ports and each live tunnel's are opened
// (reachable from a peer namespace), a tunnel's port is closed again
// when its lease ends, rules flushed by someone else are put back, and
// the gateway removes what it added when it stops.
func TestGatewayFirewall(t *testing.T) {
	parallel(t)
	h := newHostPair(t)
	bin := buildCommands(t, "./cmd/diglett", "./cmd/diglett-server", "./examples/hello")
	dir := t.TempDir()
	// Ports of the host namespace's own: nothing else binds there.
	cfg := writeFile(t, dir, "gateway.yaml", fmt.Sprintf(`version: 1
listen: 0.0.0.0:20000
data_dir: %s
domain: home.test
http_addr: 0.0.0.0:8080
ports: 30000-30010
lease: 1s
firewall: {backend: nftables, host_chain: inet filter input, refresh: 1s}
`, dir))
	site := "http://" + h.hostAddr + ":8080/"
	if _, err := h.visit(site, "web.home.test"); err == nil || !strings.Contains(err.Error(), "exit status 28") {
		t.Fatalf("the host firewall let the visitor through before the gateway ran: %v", err)
	}

	hello := exec.Command(h.ip, "netns", "exec", h.host, filepath.Join(bin, "hello"), "-listen", "127.0.0.1:9000")
	if err := hello.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hello.Process.Kill(); hello.Wait() })
	g := startGatewayCmd(t, exec.Command(h.ip, "netns", "exec", h.host, filepath.Join(bin, "diglett-server"), "--config", cfg))
	table := func() string { return h.inHost(t, h.nft, "list", "table", "inet", "diglett") }
	waitForTable := func(what string, ok func(string) bool) {
		t.Helper()
		if err := testutil.Poll(eventually, func() error {
			out, err := exec.Command(h.ip, "netns", "exec", h.host, h.nft, "list", "table", "inet", "diglett").CombinedOutput()
			if err != nil || !ok(string(out)) {
				return fmt.Errorf("%s: %s", what, out)
			}
			return nil
		}); err != nil {
			t.Fatalf("%v\ngateway:\n%s", err, g.stderr)
		}
	}
	waitForTable("the gateway's ports", func(s string) bool { return strings.Contains(s, "8080") && strings.Contains(s, "20000") })
	// The gateway's own answer: no tunnel web yet.
	if out, err := h.visit(site, "web.home.test"); err != nil || !strings.Contains(out, "no tunnel") {
		t.Fatalf("the HTTP port is not reachable through the firewall: %v %s", err, out)
	}
	t.Logf("the gateway's ports are open in table inet diglett:\n%s", table())

	// The agent, in the host namespace too.
	agent := exec.Command(h.ip, "netns", "exec", h.host, filepath.Join(bin, "diglett"), "-g", "127.0.0.1:20000",
		"--fingerprint", g.Fingerprint, "--known-gateways", filepath.Join(dir, "known_gateways"),
		"--transport", "tcp", "-n", "web", "127.0.0.1:9000")
	stdout, err := agent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	agentErr := &testutil.Buffer{}
	agent.Stderr = agentErr
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	agentDone := make(chan struct{})
	t.Cleanup(func() { agent.Process.Kill(); <-agentDone })
	ports := make(chan string, 1)
	go func() {
		defer close(agentDone)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := tunnelLine.FindStringSubmatch(sc.Text()); m != nil {
				_, port, _ := strings.Cut(m[2], ":")
				ports <- port
			}
		}
		agent.Wait()
	}()
	var port string
	select {
	case port = <-ports:
	case <-time.After(eventually):
		t.Fatalf("the agent printed no tunnel:\n%s", agentErr)
	}
	tunnel := "http://" + h.hostAddr + ":" + port + "/"
	if err := testutil.Poll(eventually, func() error {
		out, err := h.visit(tunnel, "web")
		if err == nil && !strings.Contains(out, "Hello from behind the NAT") {
			err = fmt.Errorf("answer %q", out)
		}
		return err
	}); err != nil {
		t.Fatalf("the tunnel's port %s is not reachable through the firewall: %v\n%s", port, err, table())
	}
	t.Logf("tunnel port %s opened and reached from the peer namespace", port)

	// Someone flushes the gateway's table: the next check puts it back.
	h.inHost(t, h.nft, "delete", "table", "inet", "diglett")
	waitForTable("the table put back", func(s string) bool { return strings.Contains(s, port) })
	if _, err := h.visit(tunnel, "web"); err != nil {
		t.Fatalf("after the rules were put back: %v", err)
	}
	waitFor(t, "restored", g.stderr, "firewall rules restored")
	t.Logf("table inet diglett deleted by hand: put back and reachable again")

	// The agent leaves; when its lease ends the port is closed.
	agent.Process.Signal(syscall.SIGTERM)
	waitForTable("the tunnel's port closed", func(s string) bool { return !strings.Contains(s, port) && strings.Contains(s, "20000") })
	t.Logf("the lease of web ended: port %s closed", port)

	// The gateway stops: it removes its table and its rule in the host's chain.
	g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.exited:
	case <-time.After(eventually):
		t.Fatalf("the gateway did not stop:\n%s", g.stderr)
	}
	g.killed = true
	rules := h.inHost(t, h.nft, "list", "ruleset")
	if strings.Contains(rules, "diglett") {
		t.Fatalf("the gateway left rules behind:\n%s", rules)
	}
	if _, err := h.visit(site, "web.home.test"); err == nil {
		t.Fatal("the HTTP port is still reachable after the gateway stopped")
	}
	t.Logf("the gateway stopped and removed its rules; the host firewall is as before:\n%s", rules)
}
