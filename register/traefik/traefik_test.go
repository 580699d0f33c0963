package traefik

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/testutil"
	"go.yaml.in/yaml/v3"
)

// The golden files in testdata were written by hand from the proxy's
// dynamic configuration reference; -update rewrites them from the code,
// for a change to review line by line.
var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// golden compares got with testdata/name.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs; got:\n%s\nwant:\n%s", name, got, want)
	}
}

func newRegisterer(t *testing.T, cfg Config) *Registerer {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Error(err)
		}
	})
	return r
}

func register(t *testing.T, r *Registerer, rt gateway.Route) io.Closer {
	t.Helper()
	c, err := r.Register(context.Background(), rt)
	if err != nil {
		t.Fatalf("register %s: %v", rt.Name, err)
	}
	return c
}

// group is the settings of a gateway behind the proxy's TLS entry point.
var group = Config{
	EntryPoints:  []string{"websecure"},
	Middlewares:  []string{"auth@file", "compress"},
	CertResolver: "le",
}

// passthrough is the settings of a gateway whose tunnels terminate TLS.
var passthrough = Config{
	EntryPoints:    []string{"websecure"},
	Upstream:       "10.0.0.5",
	TLSPassthrough: true,
}

var (
	web   = gateway.Route{Name: "web", Port: 20001, Identity: "alice", Hosts: []string{"web.example.com"}}
	shop  = gateway.Route{Name: "shop", Port: 20002, Identity: "bob", Hosts: []string{"shop.example.com", "shop.example.org", "www.example.org"}}
	vault = gateway.Route{Name: "vault", Port: 20003, Identity: "carol", Hosts: []string{"vault.example.com", "secrets.example.org"}}
	db    = gateway.Route{Name: "db", Port: 20004, Identity: "carol", Hosts: []string{"db.example.com"}}
)

// TestFiles: the file of each kind of tunnel, against the reference.
func TestFiles(t *testing.T) {
	for _, tc := range []struct {
		golden string
		cfg    Config
		route  gateway.Route
	}{
		{"plain.yaml.golden", Config{}, web},
		{"group.yaml.golden", group, shop},
		{"passthrough.yaml.golden", passthrough, vault},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			r := newRegisterer(t, tc.cfg)
			register(t, r, tc.route)
			path := filepath.Join(r.cfg.Dir, "diglett-"+tc.route.Name+".yaml")
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.golden, got)
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o644 {
				t.Errorf("mode %v, want 0644", fi.Mode().Perm())
			}
			// The file says in YAML what the http provider says in JSON.
			var fromYAML, fromJSON any
			if err := yaml.Unmarshal(got, &fromYAML); err != nil {
				t.Fatalf("the file is no YAML: %v", err)
			}
			if err := json.Unmarshal(r.json.Load().body, &fromJSON); err != nil {
				t.Fatal(err)
			}
			if a, b := fmt.Sprint(fromYAML), fmt.Sprint(fromJSON); a != b {
				t.Errorf("file and http provider differ:\n%s\n%s", a, b)
			}
		})
	}
}

// TestProvider: the http provider's JSON with two tunnels, against the
// reference, from Handler and from the module's own listener.
func TestProvider(t *testing.T) {
	for _, tc := range []struct {
		golden string
		cfg    Config
		routes []gateway.Route
	}{
		{"provider.json.golden", group, []gateway.Route{web, shop}},
		{"provider-passthrough.json.golden", passthrough, []gateway.Route{vault, db}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			cfg := tc.cfg
			cfg.HTTPProvider = "127.0.0.1:0"
			r := newRegisterer(t, cfg)
			if r.ProviderAddr() != "" {
				t.Fatal("New listened")
			}
			for _, rt := range tc.routes {
				register(t, r, rt)
			}
			res, err := http.Get("http://" + r.ProviderAddr() + ProviderPath)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("got %s %q", res.Status, res.Header.Get("Content-Type"))
			}
			golden(t, tc.golden, body)

			// Unchanged: 304; the listener serves nothing else.
			req, _ := http.NewRequest(http.MethodGet, "http://"+r.ProviderAddr()+ProviderPath, nil)
			req.Header.Set("If-None-Match", res.Header.Get("ETag"))
			res2, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res2.Body.Close()
			if res2.StatusCode != http.StatusNotModified {
				t.Errorf("If-None-Match of the current ETag: %s, want 304", res2.Status)
			}
			res3, err := http.Get("http://" + r.ProviderAddr() + "/")
			if err != nil {
				t.Fatal(err)
			}
			res3.Body.Close()
			if res3.StatusCode != http.StatusNotFound {
				t.Errorf("GET /: %s, want 404", res3.Status)
			}
		})
	}
}

// get fetches Handler's answer.
func get(t *testing.T, r *Registerer, etag string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/anywhere", nil)
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	w := httptest.NewRecorder()
	r.Handler().ServeHTTP(w, req)
	return w
}

// TestProviderFollowsRoutes: the JSON changes with the routes, and its
// ETag with it; with no route it is {}.
func TestProviderFollowsRoutes(t *testing.T) {
	r := newRegisterer(t, Config{})
	empty := get(t, r, "")
	if got := empty.Body.String(); got != "{}\n" {
		t.Fatalf("no route: %q", got)
	}
	c := register(t, r, web)
	one := get(t, r, empty.Header().Get("ETag"))
	if one.Code != http.StatusOK || !strings.Contains(one.Body.String(), "diglett-web") {
		t.Fatalf("after register: %d %s", one.Code, one.Body)
	}
	if one.Header().Get("ETag") == empty.Header().Get("ETag") {
		t.Error("ETag unchanged")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if got := get(t, r, "").Body.String(); got != "{}\n" {
		t.Fatalf("after close: %q", got)
	}
	w := httptest.NewRecorder()
	r.Handler().ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/", nil))
	if w.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", w.Code)
	}
}

// TestCloseIdempotent: Close deletes the file; closing again, or after
// the file was deleted by hand, succeeds.
func TestCloseIdempotent(t *testing.T) {
	r := newRegisterer(t, Config{})
	path := filepath.Join(r.cfg.Dir, "diglett-web.yaml")
	c := register(t, r, web)
	cc, ok := c.(gateway.ContextCloser)
	if !ok {
		t.Fatalf("closer %T is no ContextCloser", c)
	}
	if err := cc.CloseContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("file still there: %v", err)
	}
	if err := cc.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}

	c = register(t, r, web)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("close of a file already gone: %v", err)
	}
	if got := get(t, r, "").Body.String(); got != "{}\n" {
		t.Fatalf("after close: %q", got)
	}
}

// TestNewerRouteSurvivesOldClose: a tunnel gone and made again under the
// same name keeps its file when the old route's Close comes late.
func TestNewerRouteSurvivesOldClose(t *testing.T) {
	r := newRegisterer(t, Config{})
	old := register(t, r, web)
	moved := web
	moved.Port = 20999
	register(t, r, moved)
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(r.cfg.Dir, "diglett-web.yaml"))
	if err != nil {
		t.Fatalf("the newer route's file is gone: %v", err)
	}
	if !strings.Contains(string(data), ":20999") {
		t.Fatalf("file:\n%s", data)
	}
}

// TestNoHosts: with no host name nothing is published, once said at Info.
func TestNoHosts(t *testing.T) {
	var logs testutil.Buffer
	r := newRegisterer(t, Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	for _, name := range []string{"a", "b"} {
		c := register(t, r, gateway.Route{Name: name, Port: 20001})
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	ents, err := os.ReadDir(r.cfg.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("files written: %v", ents)
	}
	if got := get(t, r, "").Body.String(); got != "{}\n" {
		t.Errorf("http provider: %q", got)
	}
	if n := strings.Count(logs.String(), "level=INFO"); n != 1 || !strings.Contains(logs.String(), "tunnels without host names are not published") {
		t.Errorf("want one Info line; logged:\n%s", &logs)
	}
}

// TestSweep: Sweep removes only this module's files, and not those of
// the routes published now.
func TestSweep(t *testing.T) {
	r := newRegisterer(t, Config{})
	dir := r.cfg.Dir
	write := func(name string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("http: {}\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	stale := []string{"diglett-old.yaml", "diglett-a-b.yaml", ".diglett-old.yaml.123456.tmp"}
	others := []string{"middlewares.yaml", "diglett-.yaml", "diglett-Old.yaml", "diglett-old.yml", "diglett-old.yaml.bak", "my-diglett-old.yaml", ".diglett-old.yaml.x.tmp"}
	for _, n := range append(slices.Clone(stale), others...) {
		write(n)
	}
	// A directory and a link with our names are not regular files.
	if err := os.Mkdir(filepath.Join(dir, "diglett-sub.yaml"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("middlewares.yaml", filepath.Join(dir, "diglett-link.yaml")); err != nil {
		t.Fatal(err)
	}
	register(t, r, web)

	if err := r.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, n := range stale {
		if _, err := os.Lstat(filepath.Join(dir, n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s not swept: %v", n, err)
		}
	}
	for _, n := range append(others, "diglett-sub.yaml", "diglett-link.yaml", "diglett-web.yaml") {
		if _, err := os.Lstat(filepath.Join(dir, n)); err != nil {
			t.Errorf("%s swept: %v", n, err)
		}
	}
}

// TestMissingDir: a directory that does not exist is no build error, but
// a clear Register and Sweep error; once it exists, Register works.
func TestMissingDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dynamic")
	r := newRegisterer(t, Config{Dir: dir})
	_, err := r.Register(context.Background(), web)
	if err == nil || !strings.Contains(err.Error(), "directory "+dir+" does not exist") {
		t.Fatalf("register: %v", err)
	}
	if err := r.Sweep(context.Background()); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("sweep: %v", err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	register(t, r, web)
	if _, err := os.Stat(filepath.Join(dir, "diglett-web.yaml")); err != nil {
		t.Fatal(err)
	}
}

// TestAtomicWrite: while routes are rewritten over and over, a reader
// only ever sees whole files, and no temporary file is left.
func TestAtomicWrite(t *testing.T) {
	r := newRegisterer(t, Config{})
	path := filepath.Join(r.cfg.Dir, "diglett-big.yaml")
	// Many hosts make a file of some size, so a write in place would be
	// seen half done.
	route := func(port int) gateway.Route {
		rt := gateway.Route{Name: "big", Port: port}
		for i := range 2000 {
			rt.Hosts = append(rt.Hosts, fmt.Sprintf("host-%04d.example.com", i))
		}
		return rt
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var reads, bad atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			data, err := os.ReadFile(path)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			reads.Add(1)
			var d dynamic
			if err != nil || yaml.Unmarshal(data, &d) != nil || d.HTTP == nil || len(d.HTTP.Services["diglett-big"].LoadBalancer.Servers) != 1 ||
				!strings.HasSuffix(string(data), "\n") || strings.Count(d.HTTP.Routers["diglett-big"].Rule, "Host(") != 2000 {
				bad.Add(1)
			}
		}
	}()
	deadline := time.Now().Add(time.Second)
	for port := 20000; time.Now().Before(deadline) || reads.Load() < 10; port++ {
		register(t, r, route(port))
	}
	close(stop)
	wg.Wait()
	if bad.Load() > 0 {
		t.Errorf("%d of %d reads saw a partial file", bad.Load(), reads.Load())
	}
	ents, err := os.ReadDir(r.cfg.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != "diglett-big.yaml" {
		t.Errorf("directory holds %v", ents)
	}
}

// TestProviderListenerLifecycle: the listener starts at the first Sweep,
// not at New, and stops at Close; a busy address is a clear error.
func TestProviderListenerLifecycle(t *testing.T) {
	r, err := New(Config{Dir: t.TempDir(), HTTPProvider: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	addr := r.ProviderAddr()
	if addr == "" {
		t.Fatal("Sweep did not start the listener")
	}
	// A second registerer on the same address fails to start, and says
	// why.
	r2 := newRegisterer(t, Config{HTTPProvider: addr})
	if _, err := r2.Register(context.Background(), web); err == nil || !strings.Contains(err.Error(), "http provider") {
		t.Errorf("busy address: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if _, err := http.Get("http://" + addr + ProviderPath); err == nil {
		t.Error("listener still serving after Close")
	}
	if _, err := r.Register(context.Background(), web); err == nil {
		t.Error("register after Close succeeded")
	}
}

// TestValidate: bad settings are refused at build, with the key.
func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "no dir"},
		{Config{Dir: "relative/dir"}, "want an absolute path"},
		{Config{Dir: "/d", EntryPoints: []string{""}}, "entry_points: empty name"},
		{Config{Dir: "/d", Middlewares: []string{"a b"}}, "middlewares:"},
		{Config{Dir: "/d", CertResolver: "le", TLSPassthrough: true}, "cert_resolver: has no use with tls_passthrough"},
		{Config{Dir: "/d", Upstream: "127.0.0.1:80"}, "upstream"},
		{Config{Dir: "/d", Upstream: "http://x"}, "upstream"},
		{Config{Dir: "/d", HTTPProvider: "0.0.0.0:8081"}, "http_provider: \"0.0.0.0:8081\": want a loopback address"},
		{Config{Dir: "/d", HTTPProvider: "8081"}, "http_provider:"},
	} {
		_, err := New(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want %q", tc.cfg, err, tc.want)
		}
	}
	for _, ok := range []Config{
		{Dir: "/d", Upstream: "gateway.internal", HTTPProvider: "localhost:8081"},
		{Dir: "/d", Upstream: "::1", HTTPProvider: "[::1]:8081"},
		{Dir: "/d", Upstream: "gateway"},
	} {
		if _, err := New(ok); err != nil {
			t.Errorf("%+v: %v", ok, err)
		}
	}
}

// TestBadRoute: a route that could not be written safely is refused.
func TestBadRoute(t *testing.T) {
	r := newRegisterer(t, Config{})
	for _, rt := range []gateway.Route{
		{Name: "../etc", Port: 1, Hosts: []string{"a.example.com"}},
		{Name: "web", Port: 1, Hosts: []string{"a`) || Host(`b.example.com"}},
		{Name: "web", Port: 0, Hosts: []string{"a.example.com"}},
	} {
		if _, err := r.Register(context.Background(), rt); err == nil {
			t.Errorf("%+v registered", rt)
		}
	}
}
