package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
	"go.yaml.in/yaml/v3"
)

// The proxy cannot be built here (go install refuses its module, whose
// go.mod has replace directives), so these tests check what the traefik
// module gives it, the files of its file provider and the JSON of its http
// provider, against the gateway's tunnels; register/traefik checks both
// against golden files written from the proxy's reference.

// traefikRoute is what the tests read back of one tunnel's router and
// service, from a file or from the http provider's JSON.
type traefikRoute struct {
	Rule        string
	URL         string
	EntryPoints string // joined by commas
}

// traefikConfig is the part of the proxy's dynamic configuration the
// module writes for HTTP tunnels.
type traefikConfig struct {
	HTTP struct {
		Routers map[string]struct {
			Rule        string   `json:"rule" yaml:"rule"`
			EntryPoints []string `json:"entryPoints" yaml:"entryPoints"`
			Service     string   `json:"service" yaml:"service"`
		} `json:"routers" yaml:"routers"`
		Services map[string]struct {
			LoadBalancer struct {
				Servers []struct {
					URL string `json:"url" yaml:"url"`
				} `json:"servers" yaml:"servers"`
			} `json:"loadBalancer" yaml:"loadBalancer"`
		} `json:"services" yaml:"services"`
	} `json:"http" yaml:"http"`
}

// route returns tunnel name's router rule and service URL, or an error if
// the configuration lacks them.
func (c *traefikConfig) route(name string) (traefikRoute, error) {
	id := "diglett-" + name
	rt, ok := c.HTTP.Routers[id]
	if !ok {
		return traefikRoute{}, fmt.Errorf("no router %s", id)
	}
	if rt.Service != id {
		return traefikRoute{}, fmt.Errorf("router %s sends to %q", id, rt.Service)
	}
	svc, ok := c.HTTP.Services[id]
	if !ok || len(svc.LoadBalancer.Servers) != 1 {
		return traefikRoute{}, fmt.Errorf("no service %s with one server", id)
	}
	return traefikRoute{Rule: rt.Rule, URL: svc.LoadBalancer.Servers[0].URL, EntryPoints: strings.Join(rt.EntryPoints, ",")}, nil
}

// traefikFile reads tunnel name's file in dir.
func traefikFile(dir, name string) (traefikRoute, error) {
	data, err := os.ReadFile(filepath.Join(dir, "diglett-"+name+".yaml"))
	if err != nil {
		return traefikRoute{}, err
	}
	var c traefikConfig
	if err := yaml.Unmarshal(data, &c); err != nil {
		return traefikRoute{}, fmt.Errorf("file: %w\n%s", err, data)
	}
	return c.route(name)
}

// traefikProvider fetches the http provider's JSON at url.
func traefikProvider(url string) (*traefikConfig, error) {
	res, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, errors.New(res.Status)
	}
	var c traefikConfig
	if err := json.NewDecoder(io.LimitReader(res.Body, 1<<20)).Decode(&c); err != nil {
		return nil, err
	}
	return &c, nil
}

// traefikGateway is a gateway's configuration file with the traefik
// module; tokens.yaml beside it lets the token s3cret publish web.
type traefikGateway struct {
	Listen   string // default 127.0.0.1:0
	Lease    string
	Groups   string // the groups section, if any
	Settings string // the module's settings, beside dir and http_provider
	Provider string // http_provider
}

// write writes g as dir/gateway.yaml, atomically, and returns its path.
func (g traefikGateway) write(t *testing.T, dir string) string {
	t.Helper()
	if g.Listen == "" {
		g.Listen = "127.0.0.1:0"
	}
	lo, hi := randomPortWindow()
	content := fmt.Sprintf(`version: 1
listen: %s
data_dir: state
ports: %d-%d
public_bind: 127.0.0.1
domain: %s
http_addr: %s
https_addr: "off"
lease: %s
auth:
  - tokens: {file: tokens.yaml}
%sregister:
  - traefik: {dir: dynamic, http_provider: %q%s}
`, g.Listen, lo, hi, testDomain, freeAddr(t), g.Lease, g.Groups, g.Provider, g.Settings)
	path := filepath.Join(dir, "gateway.yaml")
	for name, data := range map[string]string{
		"gateway.yaml": content,
		"tokens.yaml":  "- token: s3cret\n  identity: alice\n  names: [web]\n",
	} {
		tmp := filepath.Join(dir, name+".tmp")
		if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "dynamic"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// pageBackend starts an HTTP backend that answers page.
func pageBackend(t *testing.T, page string) string {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, page) }))
	t.Cleanup(s.Close)
	return s.Listener.Addr().String()
}

// fetchPage gets url as the proxy would send a visitor there.
func fetchPage(url string) (string, error) {
	c := &http.Client{Timeout: promptly, Transport: &http.Transport{DisableKeepAlives: true}}
	res, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	return string(b), err
}

// TestTraefikRegisterer: a gateway with the traefik module writes the
// file of a tunnel that goes live, with its host names and its public
// port, and lists it in the http provider; the route, as the proxy would
// follow it, reaches the backend. The lease keeps it while the agent is
// away; its end removes it.
func TestTraefikRegisterer(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	dynamic := filepath.Join(dir, "dynamic")
	provider := freeAddr(t)
	gw := traefikGateway{
		Lease:    "2s",
		Groups:   "groups:\n  - name: web\n    hosts: [www.example.test]\n    auth:\n      - tokens: {file: tokens.yaml}\n",
		Provider: provider,
	}.write(t, dir)
	adminAddr := freeAddr(t)
	srv := startServerCommand(t, "--config", gw, "--admin-addr", adminAddr)
	a := startAgentCommand(t, "-g", srv.Addr, "-n", "web", "-t", "s3cret", "--fingerprint", srv.Fingerprint,
		"--known-gateways", filepath.Join(dir, "known_gateways"), "--transport", "tcp", pageBackend(t, "hello from web"))
	_, port, err := net.SplitHostPort(a.tunnel(t, "web"))
	if err != nil {
		t.Fatal(err)
	}
	want := traefikRoute{
		Rule: "Host(`web." + testDomain + "`) || Host(`www.example.test`)",
		URL:  "http://127.0.0.1:" + port,
	}

	var got traefikRoute
	if err := testutil.Poll(eventually, func() (err error) {
		got, err = traefikFile(dynamic, "web")
		return err
	}); err != nil {
		t.Fatalf("no file for the tunnel: %v\n%s", err, &srv.stderr)
	}
	if got != want {
		t.Errorf("file routes %+v, want %+v", got, want)
	}
	// The file and the http provider are two outputs: the file is in
	// place (renamed) before its directory is synced and the provider's
	// JSON follows, so each is waited for on its own.
	for what, url := range map[string]string{
		"http provider":                  "http://" + provider + "/traefik",
		"management listener's /traefik": "http://" + adminAddr + "/traefik",
	} {
		var got traefikRoute
		if err := testutil.Poll(eventually, func() error {
			c, err := traefikProvider(url)
			if err == nil {
				got, err = c.route("web")
			}
			return err
		}); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got != want {
			t.Errorf("%s routes %+v, want %+v", what, got, want)
		}
	}
	if page, err := fetchPage(want.URL); err != nil || page != "hello from web" {
		t.Errorf("the service's URL gave %q (%v), want the backend's page", page, err)
	}

	// The agent goes: the lease keeps the route (the gateway answers the
	// proxy's visitors 503 meanwhile), then its end removes it.
	if err := a.stop(); err != nil {
		t.Fatalf("agent: %v", err)
	}
	waitFor(t, "server log", &srv.stderr, "agent offline, name and port leased")
	if _, err := traefikFile(dynamic, "web"); err != nil && !strings.Contains(srv.stderr.String(), "lease expired") {
		t.Errorf("file gone while leased: %v", err)
	}
	waitFor(t, "server log", &srv.stderr, "lease expired")
	if err := testutil.Poll(eventually, func() error {
		if _, err := os.Stat(filepath.Join(dynamic, "diglett-web.yaml")); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("file still there (%v)", err)
		}
		c, err := traefikProvider("http://" + provider + "/traefik")
		if err != nil {
			return err
		}
		if _, err := c.route("web"); err == nil {
			return errors.New("http provider still lists web")
		}
		return nil
	}); err != nil {
		t.Fatalf("after the lease: %v", err)
	}
	srv.stop()
	// The module's listener stops with the gateway.
	if _, err := http.Get("http://" + provider + "/traefik"); err == nil {
		t.Error("http provider still serving after the gateway stopped")
	}
}

// serverProcess is the diglett-server binary running.
type serverProcess struct {
	cmd            *exec.Cmd
	stdout, stderr testutil.Buffer
	exited         chan struct{}
}

// startServerProcess runs bin with args and waits for its banner; it is
// killed if still running when the test ends.
func startServerProcess(t *testing.T, bin string, args ...string) *serverProcess {
	t.Helper()
	p := &serverProcess{cmd: exec.Command(bin, args...), exited: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.kill()
		t.Logf("server process stdout:\n%s\nstderr:\n%s", &p.stdout, &p.stderr)
	})
	if err := testutil.Poll(eventually, func() error {
		select {
		case <-p.exited:
			return errors.New("exited")
		default:
		}
		if !serverBanner.MatchString(p.stdout.String()) {
			return errors.New("no banner")
		}
		return nil
	}); err != nil {
		t.Fatalf("server process: %v; stdout:\n%s\nstderr:\n%s", err, &p.stdout, &p.stderr)
	}
	return p
}

// kill ends the process with SIGKILL, as a crash would, and waits for it.
func (p *serverProcess) kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// TestTraefikCrashRecovery: the gateway killed while a tunnel is live
// leaves its file behind; started again, it removes what the crash left
// (and an older crash's stale file, but nobody else's) and publishes the
// tunnel again.
func TestTraefikCrashRecovery(t *testing.T) {
	parallel(t)
	bin := filepath.Join(t.TempDir(), "diglett-server")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/diglett-server")
	build.Dir = repoRoot
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}

	dir := t.TempDir()
	dynamic := filepath.Join(dir, "dynamic")
	provider := freeAddr(t)
	gw := traefikGateway{Listen: freeAddr(t), Lease: "60s", Provider: provider}.write(t, dir)

	first := startServerProcess(t, bin, "--config", gw)
	m := serverBanner.FindStringSubmatch(first.stdout.String())
	addr, fp := m[1], m[2]
	a := startAgentCommand(t, "-g", addr, "-n", "web", "-t", "s3cret", "--fingerprint", fp,
		"--known-gateways", filepath.Join(dir, "known_gateways"), "--transport", "tcp", pageBackend(t, "hello from web"))
	_, port, err := net.SplitHostPort(a.tunnel(t, "web"))
	if err != nil {
		t.Fatal(err)
	}
	want := traefikRoute{Rule: "Host(`web." + testDomain + "`)", URL: "http://127.0.0.1:" + port}
	if err := testutil.Poll(eventually, func() error {
		got, err := traefikFile(dynamic, "web")
		if err == nil && got != want {
			err = fmt.Errorf("file routes %+v, want %+v", got, want)
		}
		return err
	}); err != nil {
		t.Fatalf("first life: %v\n%s", err, &first.stderr)
	}

	// An older crash's file, and files that are not the module's.
	stale := filepath.Join(dynamic, "diglett-old.yaml")
	if err := os.WriteFile(stale, []byte("http:\n  routers:\n    diglett-old:\n      rule: Host(`old.gw.test`)\n      service: diglett-old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	others := []string{"middlewares.yaml", "diglett-old.yaml.bak"}
	for _, n := range others {
		if err := os.WriteFile(filepath.Join(dynamic, n), []byte("http: {}\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	first.kill()
	if _, err := traefikFile(dynamic, "web"); err != nil {
		t.Fatalf("the crash took the file away: %v", err)
	}

	second := startServerProcess(t, bin, "--config", gw)
	if err := testutil.Poll(eventually, func() error {
		if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("stale file still there (%v)", err)
		}
		// The second life's provider starts empty: web in it was
		// published again.
		c, err := traefikProvider("http://" + provider + "/traefik")
		if err != nil {
			return fmt.Errorf("http provider: %w", err)
		}
		if got, err := c.route("web"); err != nil || got != want {
			return fmt.Errorf("http provider routes %+v (%v), want %+v", got, err, want)
		}
		if got, err := traefikFile(dynamic, "web"); err != nil || got != want {
			return fmt.Errorf("file routes %+v (%v), want %+v", got, err, want)
		}
		return nil
	}); err != nil {
		t.Fatalf("second life: %v\n%s", err, &second.stderr)
	}
	// The crash's own file was swept too, then written again.
	for _, n := range []string{"diglett-old.yaml", "diglett-web.yaml"} {
		if !strings.Contains(second.stderr.String(), "removed a stale file") || !strings.Contains(second.stderr.String(), "file="+n) {
			t.Errorf("second life did not say it removed %s:\n%s", n, &second.stderr)
		}
	}
	for _, n := range others {
		if _, err := os.Stat(filepath.Join(dynamic, n)); err != nil {
			t.Errorf("%s, not the module's, was touched: %v", n, err)
		}
	}
	// Once the agent is back, the route leads to its backend again.
	if err := testutil.Poll(eventually, func() error {
		page, err := fetchPage(want.URL)
		if err == nil && page != "hello from web" {
			err = fmt.Errorf("got %q", page)
		}
		return err
	}); err != nil {
		t.Errorf("after the restart the service's URL did not reach the backend: %v", err)
	}
}

// TestTraefikReload: a reload that changes the module's settings puts a
// new module in force: the tunnel's file and the http provider's JSON (on
// the same address, which the old module gives up) follow the new
// settings.
func TestTraefikReload(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	dynamic := filepath.Join(dir, "dynamic")
	provider := freeAddr(t)
	g := traefikGateway{Lease: "60s", Provider: provider, Settings: ", entry_points: [web]"}
	gw := g.write(t, dir)
	srv := startServerCommand(t, "--config", gw, "--watch")
	waitFor(t, "server", &srv.stderr, `msg="watching for changes"`)
	a := startAgentCommand(t, "-g", srv.Addr, "-n", "web", "-t", "s3cret", "--fingerprint", srv.Fingerprint,
		"--known-gateways", filepath.Join(dir, "known_gateways"), "--transport", "tcp", pageBackend(t, "hello from web"))
	_, port, err := net.SplitHostPort(a.tunnel(t, "web"))
	if err != nil {
		t.Fatal(err)
	}
	want := traefikRoute{Rule: "Host(`web." + testDomain + "`)", URL: "http://127.0.0.1:" + port, EntryPoints: "web"}
	published := func() error {
		got, err := traefikFile(dynamic, "web")
		if err == nil && got != want {
			err = fmt.Errorf("file routes %+v, want %+v", got, want)
		}
		if err != nil {
			return err
		}
		c, err := traefikProvider("http://" + provider + "/traefik")
		if err != nil {
			return fmt.Errorf("http provider: %w", err)
		}
		if got, err := c.route("web"); err != nil || got != want {
			return fmt.Errorf("http provider routes %+v (%v), want %+v", got, err, want)
		}
		return nil
	}
	if err := testutil.Poll(eventually, published); err != nil {
		t.Fatalf("before the reload: %v\n%s", err, &srv.stderr)
	}

	g.Settings = ", entry_points: [websecure]"
	g.write(t, dir)
	waitFor(t, "server", &srv.stderr, `msg="config reloaded"`)
	want.EntryPoints = "websecure"
	if err := testutil.Poll(eventually, published); err != nil {
		t.Fatalf("after the reload: %v\n%s", err, &srv.stderr)
	}
	if err := a.stop(); err != nil {
		t.Fatalf("agent: %v", err)
	}
	srv.stop()
}
