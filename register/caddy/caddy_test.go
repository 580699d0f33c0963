package caddy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/testutil/caddytest"
)

const page = "hello from the backend"

// noLeaks checks, when t ends (after its other cleanups: caddy killed,
// servers closed), that no goroutine outlived it.
func noLeaks(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

// backend is a loopback HTTP server answering page; it returns its port.
func backend(t *testing.T) int {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, page)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().(*net.TCPAddr).Port
}

func newRegisterer(t *testing.T, c *caddytest.Caddy, check time.Duration, log io.Writer) *Registerer {
	t.Helper()
	if log == nil {
		log = io.Discard
	}
	r, err := New(Config{
		Admin:  c.Admin,
		Listen: []string{c.HTTPAddr},
		Check:  check,
		Logger: slog.New(slog.NewTextHandler(log, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// served polls until caddy serves page for host.
func served(t *testing.T, c *caddytest.Caddy, host string) {
	t.Helper()
	err := testutil.Poll(10*time.Second, func() error {
		status, body, err := c.Get(host)
		if err != nil {
			return err
		}
		if status != http.StatusOK || body != page {
			return fmt.Errorf("%d %q", status, body)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("http://%s:%d/ through caddy: %v\ncaddy's configuration: %s", host, c.HTTPPort, err, mustConfig(t, c))
	}
}

// notServed checks that caddy does not serve page for host.
func notServed(t *testing.T, c *caddytest.Caddy, host string) {
	t.Helper()
	status, body, err := c.Get(host)
	if err == nil && body == page {
		t.Fatalf("http://%s:%d/ through caddy still reaches the backend (%d)", host, c.HTTPPort, status)
	}
}

func mustConfig(t *testing.T, c *caddytest.Caddy) string {
	t.Helper()
	cfg, err := c.Config()
	if err != nil {
		t.Fatalf("caddy's configuration: %v", err)
	}
	return cfg
}

// TestRegister: a registered tunnel is served through the real caddy,
// registering again replaces its route, and once closed caddy no longer
// routes it.
func TestRegister(t *testing.T) {
	noLeaks(t)
	c := caddytest.Start(t)
	port := backend(t)
	r := newRegisterer(t, c, -1, nil)
	ctx := context.Background()

	route := gateway.Route{Name: "example", Port: port, Identity: "alice", Hosts: []string{"example.localhost"}}
	closer, err := r.Register(ctx, route)
	if err != nil {
		t.Fatal(err)
	}
	served(t, c, "example.localhost")
	notServed(t, c, "other.localhost")

	// Again, with one more host: the route is replaced, not doubled.
	route.Hosts = append(route.Hosts, "www.example.localhost")
	closer, err = r.Register(ctx, route)
	if err != nil {
		t.Fatal(err)
	}
	served(t, c, "www.example.localhost")
	if cfg := mustConfig(t, c); strings.Count(cfg, `"@id":"diglett-example"`) != 1 {
		t.Fatalf("want one route diglett-example, caddy has %s", cfg)
	}

	cc, ok := closer.(gateway.ContextCloser)
	if !ok {
		t.Fatalf("closer %T is no gateway.ContextCloser", closer)
	}
	if err := cc.CloseContext(ctx); err != nil {
		t.Fatal(err)
	}
	notServed(t, c, "example.localhost")
	notServed(t, c, "www.example.localhost")
	if cfg := mustConfig(t, c); strings.Contains(cfg, "diglett-example") {
		t.Fatalf("route still in caddy: %s", cfg)
	}
	// Closing a route already gone succeeds.
	if err := closer.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Register(ctx, route); !errors.Is(err, ErrClosed) {
		t.Fatalf("Register after Close: %v, want ErrClosed", err)
	}
}

// TestNoHosts: a route without hosts publishes nothing.
func TestNoHosts(t *testing.T) {
	noLeaks(t)
	c := caddytest.Start(t)
	log := &testutil.Buffer{}
	r := newRegisterer(t, c, -1, log)
	before := mustConfig(t, c)
	closer, err := r.Register(context.Background(), gateway.Route{Name: "bare", Port: 1234})
	if err != nil {
		t.Fatal(err)
	}
	if after := mustConfig(t, c); after != before {
		t.Fatalf("caddy changed from %s to %s", before, after)
	}
	if !strings.Contains(log.String(), "no route published") {
		t.Fatalf("nothing logged: %q", log.String())
	}
	if err := closer.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestSweep: Sweep removes the routes with our prefix and only them.
func TestSweep(t *testing.T) {
	noLeaks(t)
	c := caddytest.Start(t)
	r := newRegisterer(t, c, -1, nil)
	ctx := context.Background()

	// No server yet: nothing to sweep.
	if err := r.Sweep(ctx); err != nil {
		t.Fatalf("sweep of an empty caddy: %v", err)
	}
	port := backend(t)
	// A gateway's earlier life left two routes; another tool put its own.
	old, err := New(Config{Admin: c.Admin, Listen: []string{c.HTTPAddr}, Check: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"stale", "stale2"} {
		if _, err := old.Register(ctx, gateway.Route{Name: name, Port: port, Hosts: []string{name + ".localhost"}}); err != nil {
			t.Fatal(err)
		}
	}
	old.Close()
	foreign := `{"@id":"theirs","match":[{"host":["theirs.localhost"]}],"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:` + strconv.Itoa(port) + `"}]}]}`
	if status, body, err := c.AdminDo(http.MethodPost, "/config/apps/http/servers/srv0/routes", foreign); err != nil || status != http.StatusOK {
		t.Fatalf("foreign route: %d %s %v", status, body, err)
	}
	served(t, c, "stale.localhost")
	served(t, c, "theirs.localhost")

	if err := r.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	cfg := mustConfig(t, c)
	if strings.Contains(cfg, "diglett-stale") {
		t.Fatalf("stale routes left: %s", cfg)
	}
	if !strings.Contains(cfg, `"@id":"theirs"`) {
		t.Fatalf("foreign route removed: %s", cfg)
	}
	notServed(t, c, "stale.localhost")
	served(t, c, "theirs.localhost")
}

// TestRestored: caddy restarted empty while the tunnel is live gets the
// route back from the periodic check.
func TestRestored(t *testing.T) {
	noLeaks(t)
	c := caddytest.Start(t)
	port := backend(t)
	log := &testutil.Buffer{}
	r := newRegisterer(t, c, 100*time.Millisecond, log)
	if _, err := r.Register(context.Background(), gateway.Route{Name: "example", Port: port, Hosts: []string{"example.localhost"}}); err != nil {
		t.Fatal(err)
	}
	served(t, c, "example.localhost")

	c.Restart()
	served(t, c, "example.localhost")
	// The line is written once the route is back, so it may follow the
	// first request served.
	if err := testutil.Poll(10*time.Second, func() error {
		if !strings.Contains(log.String(), `level=WARN msg="route restored"`) || !strings.Contains(log.String(), "id=diglett-example") {
			return errors.New("no restoration logged")
		}
		return nil
	}); err != nil {
		t.Fatalf("log lacks the restoration: %s", log.String())
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestCheckReportsDownOnce: while caddy is down the check logs one
// warning, and one line when it is back.
func TestCheckReportsDownOnce(t *testing.T) {
	noLeaks(t)
	c := caddytest.Start(t)
	port := backend(t)
	log := &testutil.Buffer{}
	r := newRegisterer(t, c, 20*time.Millisecond, log)
	if _, err := r.Register(context.Background(), gateway.Route{Name: "example", Port: port, Hosts: []string{"example.localhost"}}); err != nil {
		t.Fatal(err)
	}
	c.Kill()
	if err := testutil.Poll(10*time.Second, func() error {
		if n := strings.Count(log.String(), "cannot check the routes"); n != 1 {
			return fmt.Errorf("%d warnings", n)
		}
		return nil
	}); err != nil {
		t.Fatalf("%v: %s", err, log.String())
	}
	c.Restart()
	served(t, c, "example.localhost")
	if err := testutil.Poll(10*time.Second, func() error {
		if !strings.Contains(log.String(), "routes checked again") {
			return errors.New("not yet")
		}
		return nil
	}); err != nil {
		t.Fatalf("no recovery logged: %s", log.String())
	}
	if n := strings.Count(log.String(), "cannot check the routes"); n != 1 {
		t.Fatalf("%d warnings while down, want 1: %s", n, log.String())
	}
}

// TestAdminErrors: an error says what the admin API answered, bounded.
func TestAdminErrors(t *testing.T) {
	noLeaks(t)
	admin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, `{"error":"loading config: boom"}`+"\nsecond line\n"+strings.Repeat("x", 1000))
	}))
	defer admin.Close()
	r, err := New(Config{Admin: admin.URL, Check: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	_, err = r.Register(context.Background(), gateway.Route{Name: "example", Port: 1, Hosts: []string{"example.localhost"}})
	want := `caddy admin: PATCH /id/diglett-example: 500 Internal Server Error: {"error":"loading config: boom"}`
	if err == nil || err.Error() != want {
		t.Fatalf("Register: %v\nwant %s", err, want)
	}
	if err := r.Sweep(context.Background()); err == nil || !strings.Contains(err.Error(), "GET /config/apps/http/servers/srv0/routes: 500") {
		t.Fatalf("Sweep: %v", err)
	}

	// Nothing listening: the error says so.
	r2, err := New(Config{Admin: "http://" + testutil.RefusedAddr(t), Check: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if _, err := r2.Register(context.Background(), gateway.Route{Name: "example", Port: 1, Hosts: []string{"example.localhost"}}); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Register with caddy down: %v", err)
	}
}

// TestNew: bad settings are refused with what to give instead.
func TestNew(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Admin: "127.0.0.1:2019"}, `admin "127.0.0.1:2019": want the admin API's URL, such as http://127.0.0.1:2019`},
		{Config{Admin: "ftp://x"}, `admin "ftp://x": want the admin API's URL`},
		{Config{Server: "a/b"}, `server "a/b": want a server's name`},
		{Config{IDPrefix: "x/"}, `id_prefix "x/": no /`},
	} {
		if _, err := New(tc.cfg); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("New(%+v): %v, want %s", tc.cfg, err, tc.want)
		}
	}
	r, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if r.String() != "caddy http://127.0.0.1:2019" || r.server != "srv0" || r.upstream != "127.0.0.1" || r.prefix != "diglett-" || r.check != 10*time.Second || len(r.listen) != 1 || r.listen[0] != ":80" {
		t.Fatalf("defaults: %+v", r)
	}
}

// TestCheckEndsWithLastRoute: the check runs only while routes are
// published: closing the last one ends it, with no Close of the module.
func TestCheckEndsWithLastRoute(t *testing.T) {
	noLeaks(t)
	c := caddytest.Start(t)
	port := backend(t)
	r := newRegisterer(t, c, 20*time.Millisecond, nil)
	before := goleak.IgnoreCurrent()
	closer, err := r.Register(context.Background(), gateway.Route{Name: "example", Port: port, Hosts: []string{"example.localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := goleak.Find(before); err == nil {
		t.Fatal("no check running after Register")
	}
	if err := closer.Close(); err != nil {
		t.Fatal(err)
	}
	goleak.VerifyNone(t, before)
}

// TestLateClose: a late Close of a tunnel's old route leaves the route
// registered since under the same name.
func TestLateClose(t *testing.T) {
	noLeaks(t)
	c := caddytest.Start(t)
	port := backend(t)
	r := newRegisterer(t, c, -1, nil)
	ctx := context.Background()
	route := gateway.Route{Name: "example", Port: port, Hosts: []string{"example.localhost"}}
	old, err := r.Register(ctx, route)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Register(ctx, route); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	served(t, c, "example.localhost")
}

// TestExistingServer: routes go into a server the operator made, with no
// route list or an empty one, and before its catch-all route, which would
// otherwise hide them.
func TestExistingServer(t *testing.T) {
	noLeaks(t)
	c := caddytest.Start(t)
	port := backend(t)
	r := newRegisterer(t, c, -1, nil)
	ctx := context.Background()
	for _, tc := range []struct{ name, server string }{
		{"null", `{"listen":["` + c.HTTPAddr + `"]}`},
		{"empty", `{"listen":["` + c.HTTPAddr + `"],"routes":[]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.AdminDo(http.MethodDelete, "/config/apps/http/servers/srv0", "")
			if status, body, err := c.AdminDo(http.MethodPut, "/config/apps/http/servers/srv0", tc.server); err != nil || status != http.StatusOK {
				t.Fatalf("server: %d %s %v", status, body, err)
			}
			a, err := r.Register(ctx, gateway.Route{Name: "a", Port: port, Hosts: []string{"a.localhost"}})
			if err != nil {
				t.Fatal(err)
			}
			served(t, c, "a.localhost")
			catchAll := `{"handle":[{"handler":"static_response","body":"catch-all"}]}`
			if status, body, err := c.AdminDo(http.MethodPost, "/config/apps/http/servers/srv0/routes", catchAll); err != nil || status != http.StatusOK {
				t.Fatalf("catch-all route: %d %s %v", status, body, err)
			}
			b, err := r.Register(ctx, gateway.Route{Name: "b", Port: port, Hosts: []string{"b.localhost"}})
			if err != nil {
				t.Fatal(err)
			}
			served(t, c, "b.localhost")
			served(t, c, "a.localhost")
			if _, body, err := c.Get("other.localhost"); err != nil || body != "catch-all" {
				t.Fatalf("other host: %q %v", body, err)
			}
			a.Close()
			b.Close()
		})
	}
}
