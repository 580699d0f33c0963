package autotls

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/diglett/diglett/internal/autotls/pebbletest"
	"go.uber.org/goleak"
)

// ignoreRateLimiter ignores certmagic's internal rate limiter: it keeps
// one per CA URL and account email for the life of the process, with a
// goroutine nothing can stop. Each pebble has its own URL, so each test
// adds one.
var ignoreRateLimiter = goleak.IgnoreAnyFunction("github.com/caddyserver/certmagic.(*RingBufferRateLimiter).loop")

// leakWait bounds the wait for goroutines to end. certmagic's file locks
// keep a goroutine that notices the lock is gone within 5s.
const leakWait = 15 * time.Second

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := findLeaks(ignoreRateLimiter); err != nil {
			fmt.Fprintf(os.Stderr, "goroutines left after the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// findLeaks waits up to leakWait for the goroutines not ignored by opts to
// end, and reports those still running.
func findLeaks(opts ...goleak.Option) error {
	deadline := time.Now().Add(leakWait)
	for {
		err := goleak.Find(opts...)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// host is the name the tests' Allow accepts.
const host = "app.example.test"

func allowHost(calls *atomic.Int64) func(context.Context, string) error {
	return func(_ context.Context, name string) error {
		if calls != nil {
			calls.Add(1)
		}
		if name != host {
			return errors.New("unknown host")
		}
		return nil
	}
}

// gateway stands in for the diglett gateway: a plain HTTP listener with the
// challenge handler and an HTTPS listener with the Manager's TLS
// configuration, both on 127.0.0.1. The Manager can be swapped.
type gateway struct {
	mgr       atomic.Pointer[Manager]
	httpAddr  string // "" without an HTTP listener
	httpsAddr string
	// noHTTP01 makes the HTTP listener answer 404 to everything, the
	// challenges included.
	noHTTP01 bool

	httpChallenges atomic.Int64 // requests for /.well-known/acme-challenge/
	alpnChallenges atomic.Int64 // handshakes offering only acme-tls/1
}

// newGateway listens on 127.0.0.1; withHTTP says whether there is a plain
// HTTP listener. The servers start with start.
func newGateway(t *testing.T, withHTTP bool) (*gateway, []net.Listener) {
	t.Helper()
	g := &gateway{}
	var lns []net.Listener
	if withHTTP {
		ln := listen(t)
		g.httpAddr = ln.Addr().String()
		lns = append(lns, ln)
	}
	ln := listen(t)
	g.httpsAddr = ln.Addr().String()
	return g, append(lns, ln)
}

// start serves the listeners newGateway returned, until the test ends.
func (g *gateway) start(t *testing.T, lns []net.Listener) {
	t.Helper()
	quiet := log.New(io.Discard, "", 0)
	if g.httpAddr != "" {
		srv := &http.Server{
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.HasPrefix(r.URL.Path, "/.well-known/acme-challenge/") {
					g.httpChallenges.Add(1)
				}
				if g.noHTTP01 {
					http.NotFound(w, r)
					return
				}
				g.mgr.Load().HTTPChallengeHandler(http.NotFoundHandler()).ServeHTTP(w, r)
			}),
			ErrorLog: quiet,
		}
		go srv.Serve(lns[0])
		t.Cleanup(func() { srv.Close() })
		lns = lns[1:]
	}
	tc := &tls.Config{GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == "acme-tls/1" {
			g.alpnChallenges.Add(1)
		}
		return g.mgr.Load().TLSConfig(), nil
	}}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "hello from "+r.Host)
		}),
		ErrorLog: quiet, // failed handshakes are expected
	}
	go srv.Serve(tls.NewListener(lns[0], tc))
	t.Cleanup(func() { srv.Close() })
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func port(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := splitAddr(addr)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// testLogger writes to the test log at Debug level.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(newRecorder(t))
}

// recorder is a slog handler that writes to the test log and remembers the
// messages at Info level and above.
type recorder struct {
	slog.Handler
	mu   *sync.Mutex
	msgs *[]string
}

func newRecorder(t *testing.T) recorder {
	h := slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})
	return recorder{Handler: h, mu: new(sync.Mutex), msgs: new([]string)}
}

func (r recorder) Handle(ctx context.Context, rec slog.Record) error {
	if rec.Level >= slog.LevelInfo {
		r.mu.Lock()
		*r.msgs = append(*r.msgs, rec.Message)
		r.mu.Unlock()
	}
	return r.Handler.Handle(ctx, rec)
}

func (r recorder) WithAttrs(as []slog.Attr) slog.Handler {
	return recorder{Handler: r.Handler.WithAttrs(as), mu: r.mu, msgs: r.msgs}
}

func (r recorder) WithGroup(name string) slog.Handler {
	return recorder{Handler: r.Handler.WithGroup(name), mu: r.mu, msgs: r.msgs}
}

// count returns how many Info+ messages equal msg.
func (r recorder) count(msg string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range *r.msgs {
		if m == msg {
			n++
		}
	}
	return n
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// newManager returns a Manager for g that uses p, closed when the test
// ends, and the recorder of its logs.
func newManager(t *testing.T, g *gateway, p *pebbletest.Pebble, dir string, mod func(*Config)) (*Manager, recorder) {
	t.Helper()
	logs := newRecorder(t)
	cfg := Config{
		CA:        p.DirectoryURL,
		RootCAs:   p.RootCAs,
		Dir:       dir,
		Allow:     allowHost(nil),
		HTTPAddr:  g.httpAddr,
		HTTPSAddr: g.httpsAddr,
		Logger:    slog.New(logs),
	}
	if mod != nil {
		mod(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m, logs
}

// get fetches https://host/ from the gateway, verifying the certificate
// against roots, and returns the body and the certificate served.
func get(t *testing.T, g *gateway, roots *x509.CertPool) (string, *x509.Certificate) {
	t.Helper()
	var leaf *x509.Certificate
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, g.httpsAddr)
		},
		TLSClientConfig: &tls.Config{
			RootCAs: roots,
			VerifyConnection: func(cs tls.ConnectionState) error {
				leaf = cs.PeerCertificates[0]
				return nil
			},
		},
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 60 * time.Second}
	resp, err := client.Get("https://" + host + "/")
	if err != nil {
		t.Fatalf("GET https://%s/: %v", host, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET https://%s/: %s %s", host, resp.Status, b)
	}
	return string(b), leaf
}

func TestObtain(t *testing.T) {
	tests := []struct {
		name     string
		withHTTP bool
		mod      func(*Config)
	}{
		// No plain HTTP listener at all: only TLS-ALPN-01 can pass.
		{"tls-alpn-01", false, func(c *Config) { c.DisableHTTP01 = true }},
		// TLS-ALPN-01 off (no acme-tls/1 on the HTTPS listener): only
		// HTTP-01 can pass.
		{"http-01", true, func(c *Config) { c.DisableTLSALPN01 = true }},
		// Both on: the ACME client picks one.
		{"both", true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, lns := newGateway(t, tt.withHTTP)
			httpPort := closedPort(t)
			if tt.withHTTP {
				httpPort = port(t, g.httpAddr)
			}
			p := pebbletest.Start(t, httpPort, port(t, g.httpsAddr))
			var told outcomes
			m, logs := newManager(t, g, p, t.TempDir(), func(c *Config) {
				if tt.mod != nil {
					tt.mod(c)
				}
				c.OnCertificate = told.add
			})
			g.mgr.Store(m)
			g.start(t, lns)

			body, leaf := get(t, g, p.IssuerRoots(t))
			if want := "hello from " + host; body != want {
				t.Errorf("body = %q, want %q", body, want)
			}
			if err := leaf.VerifyHostname(host); err != nil {
				t.Error(err)
			}
			if n := p.Orders(); n != 1 {
				t.Errorf("orders = %d, want 1", n)
			}
			if n := logs.count("certificate obtained"); n != 1 {
				t.Errorf("%d log lines %q, want 1", n, "certificate obtained")
			}
			if got, want := told.list(), []string{host + " obtained"}; !slices.Equal(got, want) {
				t.Errorf("OnCertificate told %q, want %q", got, want)
			}
			h, a := g.httpChallenges.Load(), g.alpnChallenges.Load()
			t.Logf("challenges answered: http-01 %d, tls-alpn-01 %d", h, a)
			switch tt.name {
			case "tls-alpn-01":
				if a == 0 {
					t.Error("no TLS-ALPN-01 challenge handshake")
				}
			case "http-01":
				if h == 0 || a != 0 {
					t.Errorf("http-01 %d, tls-alpn-01 %d; want only http-01", h, a)
				}
			default:
				if h+a == 0 {
					t.Error("no challenge answered")
				}
			}
		})
	}
}

func TestUnknownNamesOrderNothing(t *testing.T) {
	g, lns := newGateway(t, true)
	p := pebbletest.Start(t, port(t, g.httpAddr), port(t, g.httpsAddr))
	var allowed atomic.Int64
	dir := t.TempDir()
	m, _ := newManager(t, g, p, dir, func(c *Config) { c.Allow = allowHost(&allowed) })
	g.mgr.Store(m)
	g.start(t, lns)

	const flood, workers = 200, 8
	names := make(chan string)
	var served atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range names {
				if handshake(g.httpsAddr, name) == nil {
					served.Add(1)
				}
			}
		}()
	}
	for range flood {
		b := make([]byte, 8)
		rand.Read(b)
		names <- hex.EncodeToString(b) + ".unknown.test"
	}
	names <- "" // no SNI at all
	close(names)
	wg.Wait()

	if n := served.Load(); n != 0 {
		t.Errorf("%d handshakes with unknown names succeeded", n)
	}
	if n := allowed.Load(); n < flood {
		t.Errorf("Allow asked %d times, want at least %d", n, flood)
	}
	if n := p.Requests(); n != 0 {
		t.Errorf("the CA received %d requests (%d orders), want none", n, p.Orders())
	}
	if certs, _ := filepath.Glob(filepath.Join(dir, "certificates", "*", "*")); len(certs) != 0 {
		t.Errorf("certificates stored: %v", certs)
	}

	// The counting is real: the one allowed host makes one order.
	get(t, g, p.IssuerRoots(t))
	if n := p.Orders(); n != 1 {
		t.Errorf("orders after an allowed host = %d, want 1", n)
	}
}

// outcomes records what OnCertificate is told, as "HOST obtained" or
// "HOST failed".
type outcomes struct {
	mu   sync.Mutex
	seen []string
}

func (o *outcomes) add(host string, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if ok {
		o.seen = append(o.seen, host+" obtained")
	} else {
		o.seen = append(o.seen, host+" failed")
	}
}

func (o *outcomes) list() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.seen)
}

// handshake does a TLS handshake with the gateway with SNI name ("" for
// none), accepting any certificate, so an error means the server refused.
func handshake(addr, name string) error {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	return tls.Client(conn, &tls.Config{ServerName: name, InsecureSkipVerify: true}).Handshake()
}

// TestUnansweredChallengeGetsNothing checks that pebble really validates,
// and that Close aborts an order in progress.
func TestUnansweredChallengeGetsNothing(t *testing.T) {
	g, lns := newGateway(t, true)
	g.noHTTP01 = true
	p := pebbletest.Start(t, port(t, g.httpAddr), port(t, g.httpsAddr))
	dir := t.TempDir()
	var told outcomes
	m, logs := newManager(t, g, p, dir, func(c *Config) {
		c.DisableTLSALPN01 = true
		c.OnCertificate = told.add
	})
	g.mgr.Store(m)
	g.start(t, lns)

	done := make(chan error, 1)
	go func() { done <- handshake(g.httpsAddr, host) }()
	// The order fails at once; certmagic then waits to retry it.
	for deadline := time.Now().Add(30 * time.Second); logs.count("certificate order failed") == 0; {
		if time.Now().After(deadline) {
			t.Fatal("no failed order reported")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if g.httpChallenges.Load() == 0 {
		t.Error("pebble did not try the HTTP-01 challenge")
	}
	if got := told.list(); len(got) == 0 || got[0] != host+" failed" || slices.Contains(got, host+" obtained") {
		t.Errorf("OnCertificate told %q, want failed orders only", got)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil {
		t.Error("handshake succeeded without a certificate")
	}
	if certs, _ := filepath.Glob(filepath.Join(dir, "certificates", "*", "*")); len(certs) != 0 {
		t.Errorf("certificates stored: %v", certs)
	}
}

func TestGetCertificateRefuses(t *testing.T) {
	var allowed atomic.Int64
	m, err := New(Config{
		CA:     "https://127.0.0.1:1/dir", // never reached
		Dir:    t.TempDir(),
		Allow:  allowHost(&allowed),
		Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, name := range []string{"", "127.0.0.1", "::1", "[::1]", "*.example.test"} {
		if _, err := m.TLSConfig().GetCertificate(&tls.ClientHelloInfo{ServerName: name}); err == nil {
			t.Errorf("server name %q: got a certificate", name)
		}
	}
	if n := allowed.Load(); n != 0 {
		t.Errorf("Allow asked %d times, want 0", n)
	}
	m.Close()
	if _, err := m.TLSConfig().GetCertificate(&tls.ClientHelloInfo{ServerName: host}); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: err = %v, want ErrClosed", err)
	}
}

func TestStoredCertificateServedAfterRestart(t *testing.T) {
	g, lns := newGateway(t, true)
	p := pebbletest.Start(t, port(t, g.httpAddr), port(t, g.httpsAddr))
	dir := t.TempDir()
	m1, _ := newManager(t, g, p, dir, nil)
	g.mgr.Store(m1)
	g.start(t, lns)
	roots := p.IssuerRoots(t)

	_, first := get(t, g, roots)
	if err := m1.Close(); err != nil {
		t.Fatal(err)
	}
	crt, _ := filepath.Glob(filepath.Join(dir, "certificates", "*", host, host+".crt"))
	key, _ := filepath.Glob(filepath.Join(dir, "certificates", "*", host, host+".key"))
	acct, _ := filepath.Glob(filepath.Join(dir, "acme", "*", "users", "*", "*.key"))
	if len(crt) != 1 || len(key) != 1 || len(acct) != 1 {
		t.Fatalf("stored under %s: certificate %v, key %v, account key %v", dir, crt, key, acct)
	}

	orders := p.Orders()
	m2, _ := newManager(t, g, p, dir, nil)
	g.mgr.Store(m2)
	_, second := get(t, g, roots)
	if !second.Equal(first) {
		t.Errorf("restarted manager serves serial %s, want the stored %s", second.SerialNumber, first.SerialNumber)
	}
	if n := p.Orders(); n != orders {
		t.Errorf("orders after restart = %d, want %d", n, orders)
	}
}

func TestCloseStopsGoroutines(t *testing.T) {
	g, lns := newGateway(t, true)
	p := pebbletest.Start(t, port(t, g.httpAddr), port(t, g.httpsAddr))
	roots := p.IssuerRoots(t)
	g.start(t, lns)
	baseline := goleak.IgnoreCurrent()

	m, err := New(Config{
		CA:        p.DirectoryURL,
		RootCAs:   p.RootCAs,
		Dir:       t.TempDir(),
		Allow:     allowHost(nil),
		HTTPAddr:  g.httpAddr,
		HTTPSAddr: g.httpsAddr,
		Logger:    testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	g.mgr.Store(m)
	get(t, g, roots)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}

	// Idle keep-alive connections of certmagic's ACME HTTP client end only
	// when the CA closes them: its client is not reachable from outside,
	// and has no idle timeout.
	p.CloseClientConnections()
	if err := findLeaks(baseline, ignoreRateLimiter); err != nil {
		t.Error(err)
	}
}

func TestValidate(t *testing.T) {
	allow := allowHost(nil)
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"minimal", Config{Dir: "d", Allow: allow}, true},
		{"full", Config{Dir: "d", Allow: allow, CA: "https://ca.test/dir", Email: "a@b.test", HTTPAddr: "1.2.3.4:80", HTTPSAddr: "[::]:443"}, true},
		{"no dir", Config{Allow: allow}, false},
		{"storage, no dir", Config{Allow: allow, Storage: &certmagic.FileStorage{Path: "d"}}, true},
		{"no allow", Config{Dir: "d"}, false},
		{"http CA", Config{Dir: "d", Allow: allow, CA: "http://ca.test/dir"}, false},
		{"CA and staging", Config{Dir: "d", Allow: allow, CA: "https://ca.test/dir", Staging: true}, false},
		{"bad email", Config{Dir: "d", Allow: allow, Email: "nobody"}, false},
		{"no challenge", Config{Dir: "d", Allow: allow, DisableHTTP01: true, DisableTLSALPN01: true}, false},
		{"bad address", Config{Dir: "d", Allow: allow, HTTPAddr: "80"}, false},
		{"bad port", Config{Dir: "d", Allow: allow, HTTPSAddr: ":https"}, false},
		{"dns-01 names", Config{Dir: "d", Allow: allow, DNS01: dnsProvider, Names: []string{"*.example.com", "Example.COM."}, DNSResolvers: []string{"127.0.0.1:53", "ns1.example.com"}}, true},
		{"dns-01 alone", Config{Dir: "d", Allow: allow, DNS01: dnsProvider, DisableHTTP01: true, DisableTLSALPN01: true}, true},
		{"dns-01 unused", Config{Dir: "d", Allow: allow, DNS01: dnsProvider}, false},
		{"names without dns-01", Config{Dir: "d", Allow: allow, Names: []string{"example.com"}}, false},
		{"wildcard inside", Config{Dir: "d", Allow: allow, DNS01: dnsProvider, Names: []string{"a.*.example.com"}}, false},
		{"partial wildcard", Config{Dir: "d", Allow: allow, DNS01: dnsProvider, Names: []string{"*a.example.com"}}, false},
		{"top-level wildcard", Config{Dir: "d", Allow: allow, DNS01: dnsProvider, Names: []string{"*.com"}}, false},
		{"ip name", Config{Dir: "d", Allow: allow, DNS01: dnsProvider, Names: []string{"192.0.2.1"}}, false},
		{"empty name", Config{Dir: "d", Allow: allow, DNS01: dnsProvider, Names: []string{""}}, false},
		{"bad resolver", Config{Dir: "d", Allow: allow, DNS01: dnsProvider, Names: []string{"example.com"}, DNSResolvers: []string{":53"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.cfg.Validate(); (err == nil) != tt.ok {
				t.Errorf("Validate() = %v, want ok %v", err, tt.ok)
			}
		})
	}
}
