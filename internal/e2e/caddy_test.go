package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/testutil/caddytest"
)

// The caddy registerer against the real caddy: a gateway run from its
// configuration file publishes its tunnels as routes of caddy's admin API.

const caddyPage = "hello through caddy"

// caddyWait bounds a change to show through caddy: a gateway's registerer
// call, an agent's reconnection, caddy's reload.
const caddyWait = 30 * time.Second

// caddyBackend is a loopback HTTP backend answering caddyPage; it returns
// its address.
func caddyBackend(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, caddyPage)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// caddyFiles writes, in dir, a tokens file and a gateway file whose
// register list is the caddy module pointed at c, with the gateway's
// domain gw.localhost; it returns the gateway file.
func caddyFiles(t *testing.T, dir string, c *caddytest.Caddy, listen string) string {
	t.Helper()
	lo, hi := randomPortWindow()
	files := map[string]string{
		"tokens.yaml": "- token: s3cret\n  identity: alice\n  names: [web]\n",
		"gateway.yaml": fmt.Sprintf(`version: 1
listen: %s
quic: false
data_dir: state
ports: %d-%d
public_bind: 127.0.0.1
domain: gw.localhost
http_addr: 127.0.0.1:0
lease: 10s
auth:
  - tokens: {file: tokens.yaml}
register:
  - caddy: {admin: %q, server: srv0, listen: [%q], check: 200ms}
`, listen, lo, hi, c.Admin, c.HTTPAddr),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "gateway.yaml")
}

// caddyAgent runs the agent command with tunnel web to backend.
func caddyAgent(t *testing.T, dir, gateway, fingerprint, backend string) *agentCommand {
	t.Helper()
	ag := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(ag, []byte(fmt.Sprintf(`version: 1
gateway: [%s]
token: s3cret
fingerprint: %s
known_gateways: known_gateways
transport: tcp
drain_timeout: 1s
tunnels:
  - {name: web, backend: %q}
`, gateway, fingerprint, backend)), 0o600); err != nil {
		t.Fatal(err)
	}
	return startAgentCommand(t, "--config", ag)
}

// throughCaddy polls until caddy answers host with status and body.
func throughCaddy(t *testing.T, c *caddytest.Caddy, host string, status int, body string) {
	t.Helper()
	err := testutil.Poll(caddyWait, func() error {
		s, b, err := c.Get(host)
		if err != nil {
			return err
		}
		if s != status || (body != "" && b != body) {
			return fmt.Errorf("answered %d %q", s, b)
		}
		return nil
	})
	if err != nil {
		cfg, _ := c.Config()
		t.Fatalf("http://%s:%d/ through caddy, want %d %q: %v\ncaddy's configuration: %s", host, c.HTTPPort, status, body, err, cfg)
	}
}

// TestCaddyRegisterer: an agent's tunnel is served through caddy as
// web.gw.localhost; once the agent is gone the lease keeps the route, so
// caddy passes on the gateway's 503 rather than answering on its own.
func TestCaddyRegisterer(t *testing.T) {
	parallel(t)
	c := caddytest.Start(t)
	dir := t.TempDir()
	srv := startServerCommand(t, "--config", caddyFiles(t, dir, c, "127.0.0.1:0"))
	a := caddyAgent(t, dir, srv.Addr, srv.Fingerprint, caddyBackend(t))
	a.tunnel(t, "web")

	throughCaddy(t, c, "web.gw.localhost", http.StatusOK, caddyPage)
	cfg, err := c.Config()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(cfg, `"@id":"diglett-web"`) || !strings.Contains(cfg, `"host":["web.gw.localhost"]`) {
		t.Fatalf("caddy's configuration lacks the route: %s", cfg)
	}
	// Another host is not the tunnel's.
	if _, body, err := c.Get("other.gw.localhost"); err == nil && body == caddyPage {
		t.Fatal("caddy routes other.gw.localhost to the tunnel")
	}

	// The agent goes: through the lease caddy keeps sending visitors to
	// the gateway, and passes on its 503 rather than answering on its
	// own as for a host it does not know (200, empty).
	if err := a.stop(); err != nil {
		t.Fatalf("agent command: %v", err)
	}
	waitFor(t, "server log", &srv.stderr, "agent offline, name and port leased")
	var leased int
	if err := testutil.Poll(caddyWait, func() error {
		s, b, err := c.Get("web.gw.localhost")
		if err != nil {
			return err
		}
		if s != http.StatusServiceUnavailable || !strings.Contains(b, "no agent is online for this tunnel") {
			return fmt.Errorf("answered %d %q", s, b)
		}
		leased = s
		return nil
	}); err != nil {
		t.Fatalf("web.gw.localhost during the lease: %v", err)
	}
	if strings.Contains(srv.stderr.String(), "lease expired") {
		t.Fatal("lease expired before the check: raise the test's lease")
	}
	t.Logf("during the lease caddy answered %d", leased)
	if cfg, err := c.Config(); err != nil || !strings.Contains(cfg, `"@id":"diglett-web"`) {
		t.Fatalf("route gone during the lease (%v): %s", err, cfg)
	}

	// The lease ends: the route goes.
	waitFor(t, "server log", &srv.stderr, "lease expired")
	if err := testutil.Poll(caddyWait, func() error {
		cfg, err := c.Config()
		if err != nil {
			return err
		}
		if strings.Contains(cfg, "diglett-web") {
			return errors.New("route still in caddy")
		}
		return nil
	}); err != nil {
		t.Fatalf("after the lease: %v", err)
	}
	if s, _, err := c.Get("web.gw.localhost"); err != nil || s != http.StatusOK {
		t.Fatalf("after the lease caddy answered %d (%v), want its own empty 200", s, err)
	}
}

// gatewayProcess is the real diglett-server binary running.
type gatewayProcess struct {
	cmd    *exec.Cmd
	stderr *testutil.Buffer
	exited chan error
	killed bool
	// Addr and Fingerprint are from its banner.
	Addr, Fingerprint string
}

// startGatewayProcess runs bin with the configuration file cfg and waits
// for its banner.
func startGatewayProcess(t *testing.T, bin, cfg string) *gatewayProcess {
	t.Helper()
	return startGatewayCmd(t, exec.Command(bin, "--config", cfg))
}

// startGatewayCmd runs cmd, a gateway's command line, and waits for its
// banner.
func startGatewayCmd(t *testing.T, cmd *exec.Cmd) *gatewayProcess {
	t.Helper()
	g, err := tryGatewayCmd(t, cmd)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// tryGatewayCmd is startGatewayCmd returning, rather than failing t, a
// gateway that exits or stays silent.
func tryGatewayCmd(t *testing.T, cmd *exec.Cmd) (*gatewayProcess, error) {
	t.Helper()
	g := &gatewayProcess{stderr: &testutil.Buffer{}, exited: make(chan error, 1)}
	g.cmd = cmd
	g.cmd.Stderr = g.stderr
	stdout, err := g.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	banner, exited := make(chan []string, 1), g.exited
	go func() {
		var out strings.Builder
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if m := serverBanner.FindStringSubmatch(out.String()); m != nil {
				banner <- m
				break
			}
		}
		io.Copy(io.Discard, stdout)
		exited <- g.cmd.Wait()
	}()
	t.Cleanup(func() { g.kill(t) })
	select {
	case m := <-banner:
		g.Addr, g.Fingerprint = m[1], m[2]
	case err := <-g.exited:
		g.exited <- err
		return nil, fmt.Errorf("diglett-server exited (%v):\n%s", err, g.stderr)
	case <-time.After(eventually):
		return nil, fmt.Errorf("diglett-server printed no banner:\n%s", g.stderr)
	}
	return g, nil
}

// kill SIGKILLs the gateway, once, and waits for it to exit.
func (g *gatewayProcess) kill(t *testing.T) {
	if g.killed {
		return
	}
	g.killed = true
	g.cmd.Process.Kill()
	<-g.exited
	t.Logf("diglett-server stderr:\n%s", g.stderr)
}

// TestCaddyCrashRecovery: a gateway SIGKILLed while its tunnel is live
// leaves its routes in caddy; started again, it removes the stale ones
// and publishes the live tunnel again.
func TestCaddyCrashRecovery(t *testing.T) {
	parallel(t)
	c := caddytest.Start(t)
	bin := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin+string(filepath.Separator), "./cmd/diglett-server")
	build.Dir = repoRoot
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	server := filepath.Join(bin, "diglett-server")

	dir := t.TempDir()
	cfg := caddyFiles(t, dir, c, freeAddr(t)) // a fixed address, for the agent to come back to
	g := startGatewayProcess(t, server, cfg)
	a := caddyAgent(t, dir, g.Addr, g.Fingerprint, caddyBackend(t))
	a.tunnel(t, "web")
	throughCaddy(t, c, "web.gw.localhost", http.StatusOK, caddyPage)

	g.kill(t)
	// What a crashed gateway may leave: a route of a tunnel gone since.
	stale := `{"@id":"diglett-stale","match":[{"host":["stale.gw.localhost"]}],"handle":[{"handler":"static_response","body":"stale"}],"terminal":true}`
	if status, body, err := c.AdminDo(http.MethodPost, "/config/apps/http/servers/srv0/routes", stale); err != nil || status != http.StatusOK {
		t.Fatalf("stale route: %d %s %v", status, body, err)
	}
	throughCaddy(t, c, "stale.gw.localhost", http.StatusOK, "stale")

	startGatewayProcess(t, server, cfg)
	// Sweep removes every route of ours at once (diglett-web too) before
	// any is registered again: once the stale route is gone, the page
	// comes through a route the new gateway published.
	if err := testutil.Poll(caddyWait, func() error {
		cfg, err := c.Config()
		if err != nil {
			return err
		}
		if strings.Contains(cfg, "diglett-stale") {
			return fmt.Errorf("stale route still in caddy: %s", cfg)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	throughCaddy(t, c, "web.gw.localhost", http.StatusOK, caddyPage)
	if _, body, err := c.Get("stale.gw.localhost"); err == nil && body == "stale" {
		t.Fatal("caddy still serves the stale route")
	}
}
