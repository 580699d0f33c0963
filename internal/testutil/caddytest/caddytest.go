// Package caddytest starts a real caddy (the caddy program, which
// scripts/test-deps.sh installs) for a test: its admin API and one HTTP
// port on loopback ports of its own, its data and configuration under the
// test's temporary directory, killed when the test ends. It can be killed
// and started again empty on the same ports, as a crashed proxy would be.
package caddytest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

// startTimeout bounds how long caddy may take to answer.
const startTimeout = 20 * time.Second

// Caddy is a running caddy.
type Caddy struct {
	// Admin is its admin API's URL, http://127.0.0.1:PORT.
	Admin string
	// HTTPAddr is the loopback address, 127.0.0.1:PORT, kept for plain
	// HTTP: the HTTP app's http_port is its port, so a server listening
	// there gets no automatic HTTPS.
	HTTPAddr string
	// HTTPPort is HTTPAddr's port.
	HTTPPort int

	t    testing.TB
	bin  string
	dir  string
	base []byte // the configuration every start loads

	mu   sync.Mutex
	proc *process
}

type process struct {
	cmd    *exec.Cmd
	out    *testutil.Buffer
	exited chan error
}

// Start starts caddy for t with a configuration that has only its admin
// API and the HTTP app's http_port (no server). When the program is
// missing, t fails under CI and is skipped elsewhere.
func Start(t testing.TB) *Caddy {
	t.Helper()
	bin := testutil.Program(t, "caddy")
	// A port picked free may be taken before caddy binds it: try again.
	return testutil.StartRetrying(t, "caddy", func() (*Caddy, error) { return start(t, bin) })
}

func start(t testing.TB, bin string) (*Caddy, error) {
	ports, err := testutil.FreePorts(2)
	if err != nil {
		return nil, err
	}
	admin, httpPort := ports[0], ports[1]
	c := &Caddy{
		Admin:    "http://127.0.0.1:" + strconv.Itoa(admin),
		HTTPAddr: "127.0.0.1:" + strconv.Itoa(httpPort),
		HTTPPort: httpPort,
		t:        t,
		bin:      bin,
		dir:      t.TempDir(),
	}
	c.base, err = json.Marshal(map[string]any{
		"admin": map[string]any{"listen": "127.0.0.1:" + strconv.Itoa(admin)},
		"apps": map[string]any{
			"http": map[string]any{"http_port": httpPort},
			// Never touch the machine's trust store.
			"pki": map[string]any{"certificate_authorities": map[string]any{"local": map[string]any{"install_trust": false}}},
		},
	})
	if err != nil {
		return nil, err
	}
	if err := c.run(); err != nil {
		return nil, err
	}
	t.Cleanup(c.Kill)
	return c, nil
}

// run starts the process with the base configuration and waits until
// its admin API answers.
func (c *Caddy) run() error {
	cfg := filepath.Join(c.dir, "caddy.json")
	if err := os.WriteFile(cfg, c.base, 0o600); err != nil {
		return err
	}
	p := &process{out: &testutil.Buffer{}, exited: make(chan error, 1)}
	p.cmd = exec.Command(c.bin, "run", "--config", cfg)
	p.cmd.Env = append(os.Environ(),
		"HOME="+c.dir,
		"XDG_DATA_HOME="+filepath.Join(c.dir, "data"),
		"XDG_CONFIG_HOME="+filepath.Join(c.dir, "config"),
	)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		return err
	}
	go func() { p.exited <- p.cmd.Wait() }()

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	for {
		resp, err := client.Get(c.Admin + "/config/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
			err = fmt.Errorf("admin API answered %s", resp.Status)
		}
		select {
		case werr := <-p.exited:
			return fmt.Errorf("exited (%v): %s", werr, p.out.String())
		case <-ctx.Done():
			p.cmd.Process.Kill()
			<-p.exited
			return fmt.Errorf("admin API not up within %v: %v: %s", startTimeout, err, p.out.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	c.mu.Lock()
	c.proc = p
	c.mu.Unlock()
	return nil
}

// Kill kills caddy (SIGKILL) and waits for it to exit; a caddy not
// running is left alone.
func (c *Caddy) Kill() {
	c.mu.Lock()
	p := c.proc
	c.proc = nil
	c.mu.Unlock()
	if p == nil {
		return
	}
	p.cmd.Process.Kill()
	<-p.exited
}

// Restart kills caddy and starts a new one, empty (the base
// configuration: no server, no route), on the same ports.
func (c *Caddy) Restart() {
	c.t.Helper()
	c.Kill()
	// The ports were ours a moment ago; the new process binds them again.
	if err := c.run(); err != nil {
		c.t.Fatalf("caddy: restart: %v", err)
	}
}

// Output is what caddy logged so far (the running process's).
func (c *Caddy) Output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return ""
	}
	return c.proc.out.String()
}

// Client is an HTTP client that connects to HTTPAddr whatever the URL's
// host, so that http://example.localhost:PORT/ reaches caddy.
func (c *Caddy) Client() *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, c.HTTPAddr)
			},
		},
	}
}

// Get fetches http://HOST:HTTPPORT/ through caddy and returns the status
// and the body (at most 1 MiB).
func (c *Caddy) Get(host string) (int, string, error) {
	resp, err := c.Client().Get("http://" + net.JoinHostPort(host, strconv.Itoa(c.HTTPPort)) + "/")
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b), err
}

// Config is caddy's whole configuration as JSON.
func (c *Caddy) Config() (string, error) {
	status, body, err := c.AdminDo(http.MethodGet, "/config/", "")
	if err == nil && status != http.StatusOK {
		err = fmt.Errorf("admin API answered %d: %s", status, body)
	}
	return body, err
}

// AdminDo makes one request to the admin API, with body as JSON unless
// it is empty, and returns the status and the body of the answer.
func (c *Caddy) AdminDo(method, path, body string) (int, string, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, c.Admin+path, rd)
	if err != nil {
		return 0, "", err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return resp.StatusCode, string(b), err
}
