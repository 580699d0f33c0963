package e2e

import (
	"bytes"
	"cmp"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"

	"go.uber.org/goleak"

	"github.com/diglett/diglett"

	"github.com/diglett/diglett/auth/allowall"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/ingress"
	"github.com/diglett/diglett/internal/cli"
	"github.com/diglett/diglett/internal/cli/servercli"
	"github.com/diglett/diglett/internal/identity"
	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/relay"
	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/tlsmux"
)

// Bounds of the end-to-end tests. "Eventually" checks are generous, since
// the machine may be small and shared; "promptly" checks are well below
// every timeout that could make them pass by accident.
const (
	eventually = 10 * time.Second
	promptly   = 5 * time.Second
	// atOnce bounds a fatal refusal, which the agent must not retry: one
	// connection attempt takes milliseconds, a retry loop forever.
	atOnce = 3 * time.Second
)

// Public TCP ports of test gateways come from a random window of this many
// ports below the usual ephemeral range (32768 and up), so that they do not
// clash with the local ports of outgoing connections.
const (
	portWindow    = 200
	portRangeLow  = 20000
	portRangeHigh = 32000
)

// TestMain checks, once every test has ended, that no goroutine any of
// them started is left: the leak check of the tests that run in parallel
// (see parallel), whose goroutines cannot be told apart while they run.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		// Some library goroutines end a few seconds after their owner
		// closed (the ACME library looks at its lock files every 5s).
		if err := testutil.Poll(15*time.Second, func() error { return goleak.Find(leakOptions()...) }); err != nil {
			fmt.Fprintf(os.Stderr, "goroutines left after the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// leakOptions are the goroutines that may outlive a test.
func leakOptions() []goleak.Option {
	// The ACME library keeps one rate limiter per ACME account for the
	// life of the process, by design: once an ACME test ran, it stays.
	return []goleak.Option{goleak.IgnoreTopFunction("github.com/caddyserver/certmagic.(*RingBufferRateLimiter).permit")}
}

// checkLeaks verifies, after t and all its cleanups have ended, that every
// goroutine started during t has returned. Call it first in each test so
// that its cleanup runs last. Tests that call it run alone (not with
// parallel): they run before the parallel ones start, so the goroutines
// they see are their own.
func checkLeaks(t testing.TB) {
	t.Helper()
	t.Cleanup(func() { verifyNoLeaks(t) })
}

// parallel runs t beside the other parallel tests, once the tests that
// run alone are done: for tests that mostly wait (timeouts, a peer's
// silence, an ACME server), need no exact count of the process's
// goroutines or files, and time nothing tightly. Their leaks are checked
// by TestMain at the end.
func parallel(t *testing.T) {
	t.Helper()
	t.Parallel()
}

// verifyNoLeaks fails t if goroutines beyond those ignored by opts are
// still running after a grace period.
func verifyNoLeaks(t testing.TB, opts ...goleak.Option) {
	t.Helper()
	opts = append(opts, leakOptions()...)
	deadline := time.Now().Add(eventually)
	for {
		err := goleak.Find(opts...)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("goroutines leaked: %v", err)
			return
		}
	}
}

// writeFile writes content to name in dir and returns its path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// logSink collects the log lines of one component and mirrors them to the
// test log while the test runs.
type logSink struct {
	t      testing.TB
	prefix string

	mu   sync.Mutex
	buf  bytes.Buffer
	done bool
}

// newLogger returns a debug-level logger writing to a new sink.
func newLogger(t testing.TB, prefix string) (*slog.Logger, *logSink) {
	s := &logSink{t: t, prefix: prefix}
	t.Cleanup(func() {
		s.mu.Lock()
		s.done = true
		s.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(s, &slog.HandlerOptions{Level: slog.LevelDebug})), s
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Write(p)
	if !s.done {
		s.t.Logf("%s: %s", s.prefix, bytes.TrimRight(p, "\n"))
	}
	return len(p), nil
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// waitFor waits until the text of out contains want.
func waitFor(t *testing.T, what string, out fmt.Stringer, want string) {
	t.Helper()
	waitForN(t, what, out, want, 1)
}

// waitForN waits until the text of out contains want n times.
func waitForN(t *testing.T, what string, out fmt.Stringer, want string, n int) {
	t.Helper()
	err := testutil.Poll(eventually, func() error {
		if strings.Count(out.String(), want) < n {
			return fmt.Errorf("no %q yet", want)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s never said %q (%d times); it said:\n%s", what, want, n, out)
	}
}

// newKey makes a gateway key.
func newKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func fingerprint(t testing.TB, key crypto.Signer) string {
	t.Helper()
	fp, err := identity.Fingerprint(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return fp
}

// randomPortWindow picks a window of public ports for a gateway.
func randomPortWindow() (lo, hi int) {
	lo = portRangeLow + mrand.IntN((portRangeHigh-portRangeLow)/portWindow)*portWindow
	return lo, lo + portWindow - 1
}

// gatewayOptions configures startGateway; zero fields take test defaults.
type gatewayOptions struct {
	Auth             gateway.Authenticator // default allowall.Authenticator
	Key              crypto.Signer         // default a new key
	Addr             string                // agent address; default 127.0.0.1:0
	PortMin, PortMax int                   // default a random window
	Lease            time.Duration         // default 5s
	HandshakeTimeout time.Duration         // default 5s
	StatusTimeout    time.Duration         // default gateway.DefaultStatusTimeout
	Registerer       gateway.Registerer
	LeaseFile        string // default none
	Cluster          gateway.Cluster
	PublicHost       string        // where public ports bind; default 127.0.0.1
	Quota            gateway.Quota // default the gateway's
	// HalfCloseTimeout, MaxVisitors, MaxVisitorsPerTunnel: gateway
	// defaults if zero.
	HalfCloseTimeout     time.Duration
	MaxVisitors          int
	MaxVisitorsPerTunnel int

	// HTTP ingress: with a Domain the gateway serves HTTP and HTTPS (a
	// certificate for *.Domain from a test CA) on 127.0.0.1.
	Domain            string
	TrustedProxies    []netip.Prefix
	ResponseTimeout   time.Duration
	ReadHeaderTimeout time.Duration
	VisitorAccess     gateway.VisitorAccess
	// BodyReadTimeout and MaxRequestsPerSource: gateway defaults if zero.
	BodyReadTimeout      time.Duration
	MaxRequestsPerSource int
	// MaxHandshakesPerSource: the gateway's default if zero.
	MaxHandshakesPerSource int
	// HTTPSTLS replaces the test CA's certificate for the HTTPS port.
	HTTPSTLS *tls.Config
	// HTTPChallenge wraps the plain HTTP handler (ACME HTTP-01).
	HTTPChallenge func(http.Handler) http.Handler
	// HTTPLn and HTTPSLn are listeners to serve the ingress on instead of
	// new ones (a test that must know the ports beforehand).
	HTTPLn, HTTPSLn net.Listener
}

// testGateway is a gateway serving agents on a real 127.0.0.1 socket.
type testGateway struct {
	*gateway.Server
	Addr             string // agent address
	Key              crypto.Signer
	Fingerprint      string
	PortMin, PortMax int
	Logs             *logSink

	// The HTTP ingress, with a Domain.
	Ingress             *ingress.Server
	HTTPAddr, HTTPSAddr string
	CA                  *x509.CertPool // trusts the HTTPS certificate

	t         testing.TB
	serveErr  chan error
	ingresses int        // Serve* calls besides Serve whose result is in serveErr
	webErr    chan error // the ingress's Serve and ServeHTTPS
	log       *slog.Logger
	closeOnce sync.Once
}

// Test defaults for the timers of gateways and agents. The keepalive also
// sets the multiplexer's write timeout (a third of it): long enough that a
// loaded machine (the race detector, packages tested in parallel) does not
// mistake a stalled write for a dead peer.
const (
	testKeepAlive = 6 * time.Second
	testLease     = 5 * time.Second
)

func startGateway(t testing.TB, o gatewayOptions) *testGateway {
	t.Helper()
	if o.Auth == nil {
		o.Auth = allowall.Authenticator{}
	}
	if o.Key == nil {
		o.Key = newKey(t)
	}
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	if o.PortMin == 0 {
		o.PortMin, o.PortMax = randomPortWindow()
	}
	if o.Lease == 0 {
		o.Lease = testLease
	}
	if o.HandshakeTimeout == 0 {
		o.HandshakeTimeout = 5 * time.Second
	}
	cert, err := identity.SelfSigned(o.Key, "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	log, sink := newLogger(t, "gateway")
	srv, err := gateway.New(gateway.Config{
		TLS:              &tls.Config{Certificates: []tls.Certificate{cert}},
		Auth:             o.Auth,
		Registerer:       o.Registerer,
		PortMin:          o.PortMin,
		PortMax:          o.PortMax,
		PublicHost:       cmp.Or(o.PublicHost, "127.0.0.1"),
		Lease:            o.Lease,
		HandshakeTimeout: o.HandshakeTimeout,
		StatusTimeout:    o.StatusTimeout,
		Transport:        transport.Config{MaxIdleTimeout: testKeepAlive},
		Logger:           log,
		Domain:           o.Domain,
		VisitorAccess:    o.VisitorAccess,
		LeaseFile:        o.LeaseFile,
		Cluster:          o.Cluster,
		Quota:            o.Quota,

		HalfCloseTimeout:     o.HalfCloseTimeout,
		MaxVisitors:          o.MaxVisitors,
		MaxVisitorsPerTunnel: o.MaxVisitorsPerTunnel,

		MaxHandshakesPerSource: o.MaxHandshakesPerSource,
	})
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	// A restarted gateway binds its predecessor's address, which the
	// kernel may hold for a moment.
	err = testutil.Poll(eventually, func() (err error) {
		ln, err = net.Listen("tcp", o.Addr)
		return err
	})
	if err != nil {
		t.Fatalf("gateway listen: %v", err)
	}
	g := &testGateway{
		Server:      srv,
		Addr:        ln.Addr().String(),
		Key:         o.Key,
		Fingerprint: fingerprint(t, o.Key),
		PortMin:     o.PortMin,
		PortMax:     o.PortMax,
		Logs:        sink,
		log:         log,
		t:           t,
		serveErr:    make(chan error, 4),
	}
	go func() { g.serveErr <- srv.Serve(ln) }()
	// QUIC on the same port number, over UDP.
	pc, err := net.ListenPacket("udp", ln.Addr().String())
	if err != nil {
		t.Fatalf("gateway listen QUIC: %v", err)
	}
	g.ingresses++
	go func() { g.serveErr <- srv.ServeQUIC(pc) }()
	t.Cleanup(g.Close)
	if o.Domain != "" {
		g.startIngress(o)
	}
	return g
}

// startIngress serves the HTTP ingress of g on 127.0.0.1, wired to the
// gateway as the command line wires it.
func (g *testGateway) startIngress(o gatewayOptions) {
	t := g.t
	g.Ingress = ingress.New(g.Server, ingress.Config{
		TrustedProxies:       o.TrustedProxies,
		ResponseTimeout:      o.ResponseTimeout,
		StatusTimeout:        o.StatusTimeout,
		ReadHeaderTimeout:    o.ReadHeaderTimeout,
		BodyReadTimeout:      o.BodyReadTimeout,
		MaxRequestsPerSource: o.MaxRequestsPerSource,
		Logger:               g.log, // in Logs, with the gateway's lines
	})
	g.webErr = make(chan error, 2)
	hl, tl := o.HTTPLn, o.HTTPSLn
	var err error
	if hl == nil {
		if hl, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	if tl == nil {
		if tl, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	tc := o.HTTPSTLS
	if tc == nil {
		var cert tls.Certificate
		cert, g.CA = testCA(t, "*."+o.Domain)
		tc = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	g.HTTPAddr, g.HTTPSAddr = hl.Addr().String(), tl.Addr().String()
	g.SetIngressPorts(ingress.Port(hl), ingress.Port(tl))
	go func() { g.webErr <- g.Ingress.Serve(hl, o.HTTPChallenge) }()
	go func() { g.webErr <- g.Ingress.ServeHTTPS(tl, tc) }()
}

// HTTPSourceRefusals is how many requests the ingress refused for the
// per-source cap.
func (g *testGateway) HTTPSourceRefusals() uint64 {
	return g.Ingress.SourceRefusals()
}

// testCA makes a CA and a certificate it signed for host.
func testCA(t testing.TB, host string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	caKey, key := newKey(t), newKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "diglett test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: host},
		DNSNames:     []string{host},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

// httpClient returns a client that reaches every host through g's HTTP
// ingress (http://) or HTTPS ingress (https://), trusting g's test CA.
func (g *testGateway) httpClient(t testing.TB) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			_, port, _ := net.SplitHostPort(addr)
			target := g.HTTPAddr
			if port == "443" {
				target = g.HTTPSAddr
			}
			return d.DialContext(ctx, network, target)
		},
		TLSClientConfig:   &tls.Config{RootCAs: g.CA},
		ForceAttemptHTTP2: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: eventually}
}

// Close stops the gateway at once and checks that Serve returned as
// documented.
func (g *testGateway) Close() {
	g.closeOnce.Do(func() {
		if g.Ingress != nil {
			g.Ingress.Close()
			for range 2 {
				if err := <-g.webErr; !errors.Is(err, ingress.ErrServerClosed) {
					g.t.Errorf("ingress Serve returned %v, want ErrServerClosed", err)
				}
			}
		}
		g.Server.Close()
		for range 1 + g.ingresses {
			if err := <-g.serveErr; !errors.Is(err, gateway.ErrServerClosed) {
				g.t.Errorf("gateway Serve returned %v, want ErrServerClosed", err)
			}
		}
	})
}

// agentConfig is a Config for an agent of g publishing name, with its own
// known_gateways file and its logs in the test log.
func agentConfig(t testing.TB, g *testGateway, name string) diglett.Config {
	log, _ := newLogger(t, "agent "+name)
	return diglett.Config{
		Gateway:        g.Addr,
		Name:           name,
		KnownGateways:  filepath.Join(t.TempDir(), "known_gateways"),
		MaxIdleTimeout: testKeepAlive,
		// One TLS session each, unless a test asks for more: the tests
		// of other transports and of several sessions say so.
		Transport:   diglett.TransportTCP,
		Connections: 1,
		DialTimeout: 5 * time.Second,
		MaxBackoff:  time.Second,
		Logger:      log,
	}
}

// listen runs diglett.Listen for the test; the listener is closed when the
// test ends. Listen must return within 30s: one that retries instead of
// failing shows up as a slow error, not a hung test.
func listen(t testing.TB, cfg diglett.Config) (*diglett.Listener, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	timer := time.AfterFunc(30*time.Second, cancel)
	ln, err := diglett.Listen(ctx, cfg)
	timer.Stop()
	if err != nil {
		cancel()
		return nil, err
	}
	t.Cleanup(func() {
		ln.Close()
		cancel()
	})
	return ln, nil
}

func mustListen(t testing.TB, cfg diglett.Config) *diglett.Listener {
	t.Helper()
	ln, err := listen(t, cfg)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	return ln
}

// forward serves the visitors of ln with diglett.Forward, as the agent
// command does, until the test ends: then it closes ln and waits for
// Forward to return.
func forward(t testing.TB, ln *diglett.Listener, backend string) {
	done := make(chan error, 1)
	go func() { done <- diglett.Forward(context.Background(), ln, backend, diglett.ForwardOptions{}) }()
	t.Cleanup(func() {
		ln.Close()
		<-done // nil, or the fatal error that stopped ln
	})
}

// startBackend serves handle on a new 127.0.0.1 port until the test ends.
func startBackend(t testing.TB, handle func(c *net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveBackend(t, ln, handle)
	return ln.Addr().String()
}

// serveBackend serves handle on ln until the test ends; at the end it
// closes every connection still open and waits for the handlers.
func serveBackend(t testing.TB, ln net.Listener, handle func(c *net.TCPConn)) {
	var (
		mu    sync.Mutex
		conns = make(map[net.Conn]struct{})
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					c.Close()
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
				}()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// startEcho starts a backend that sends back what it receives and
// half-closes at EOF.
func startEcho(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveEcho(t, ln)
	return ln.Addr().String()
}

func serveEcho(t testing.TB, ln net.Listener) {
	serveBackend(t, ln, func(c *net.TCPConn) {
		buf := make([]byte, 32<<10)
		if _, err := io.CopyBuffer(c, struct{ io.Reader }{c}, buf); err == nil {
			c.CloseWrite()
		}
	})
}

// unusedAddr is a 127.0.0.1 address where nothing listens.
func unusedAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// dialVisitor connects to a public address as a visitor.
func dialVisitor(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, promptly)
	if err != nil {
		t.Fatalf("visitor dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// roundTrip sends msg through a new visitor connection to an echo backend
// behind addr, half-closes, and checks the echo.
func roundTrip(addr, msg string) error { return echoExchange(addr, msg, true) }

// echoExchange writes msg to an echo tunnel at addr and reads it back:
// with halfClose, after closing its side for writing and until EOF;
// without, just the echo's length, then it closes.
func echoExchange(addr, msg string, halfClose bool) error {
	c, err := net.DialTimeout("tcp", addr, promptly)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(eventually))
	if _, err := io.WriteString(c, msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	var got []byte
	if halfClose {
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			return fmt.Errorf("close write: %w", err)
		}
		got, err = io.ReadAll(c)
	} else {
		got = make([]byte, len(msg))
		_, err = io.ReadFull(c, got)
	}
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if string(got) != msg {
		return fmt.Errorf("echo: got %q, want %q", got, msg)
	}
	return nil
}

// mustRoundTrip fails t unless an echo through addr works.
func mustRoundTrip(t *testing.T, addr, msg string) {
	t.Helper()
	if err := roundTrip(addr, msg); err != nil {
		t.Fatalf("round trip through %s: %v", addr, err)
	}
}

// proxy relays TCP connections to a target; Kill cuts every connection
// at once, with a reset, as a dying machine or network would.
type proxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	pairs  [][2]net.Conn // in the order they were made
	killed bool
	wg     sync.WaitGroup
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.relay(c)
			}()
		}
	}()
	t.Cleanup(p.Kill)
	return p
}

func (p *proxy) Addr() string { return p.ln.Addr().String() }

func (p *proxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.killed {
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *proxy) relay(c net.Conn) {
	u, err := net.DialTimeout("tcp", p.target, promptly)
	if err != nil {
		c.Close()
		return
	}
	if !p.track(c, u) {
		c.Close()
		u.Close()
		return
	}
	p.mu.Lock()
	p.pairs = append(p.pairs, [2]net.Conn{c, u})
	p.mu.Unlock()
	relay.Pipe(c, u)
}

// KillOne resets the oldest connection through the proxy, both ways, and
// leaves the others alone.
func (p *proxy) KillOne() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.pairs) == 0 {
		return
	}
	for _, c := range p.pairs[0] {
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	p.pairs = p.pairs[1:]
}

// Kill closes the proxy and resets every connection through it.
func (p *proxy) Kill() {
	p.mu.Lock()
	p.killed = true
	p.ln.Close()
	for c := range p.conns {
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// rawSession opens a transport session to the gateway as an agent would,
// without the agent library, for tests that speak the protocol by hand.
func rawSession(t *testing.T, addr string) *tlsmux.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), promptly)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := tlsmux.Client(ctx, conn, rawTLSConfig(), transport.Config{MaxIdleTimeout: testKeepAlive})
	if err != nil {
		t.Fatalf("raw session: %v", err)
	}
	t.Cleanup(func() { sess.Close() })
	return sess
}

// rawTLSConfig trusts any gateway: the raw tests are about what comes after.
func rawTLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{protocol.ALPN},
		InsecureSkipVerify: true,
	}
}

// expectClosed reads from c until the peer closes it and fails t when that
// takes longer than within. Closing with an error (a reset, a TLS alert)
// counts as closed; a read timeout does not.
func expectClosed(t *testing.T, c net.Conn, within time.Duration) {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(within))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %v", within)
	}
}

// expectSessionEnd fails t unless the peer ends sess within d.
func expectSessionEnd(t *testing.T, sess *tlsmux.Session, d time.Duration) {
	t.Helper()
	select {
	case <-sess.Context().Done():
	case <-time.After(d):
		t.Fatalf("gateway kept the session open for %v", d)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// agentCommand is the agent command line running in-process.
// serverCommand is diglett-server run through its command line.
type serverCommand struct {
	Addr, Fingerprint string // from its banner
	stdout, stderr    testutil.Buffer
	t                 *testing.T
	cancel            context.CancelFunc
	errc              chan error
	stopOnce          sync.Once
}

var serverBanner = regexp.MustCompile(`diglett-server listening on (\S+)\ngateway key fingerprint: (SHA256:\S+)\n`)

// startServerCommand runs the server command with args until the test ends
// and waits for its banner; it must then stop cleanly.
func startServerCommand(t *testing.T, args ...string) *serverCommand {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &serverCommand{t: t, cancel: cancel, errc: make(chan error, 1)}
	go func() { s.errc <- servercli.Server(ctx, args, &s.stdout, &s.stderr) }()
	t.Cleanup(s.stop)
	var m []string
	if err := testutil.Poll(eventually, func() error {
		if m = serverBanner.FindStringSubmatch(s.stdout.String()); m == nil {
			return errors.New("no banner")
		}
		return nil
	}); err != nil {
		t.Fatalf("server command printed no address and fingerprint:\n%s\n%s", &s.stdout, &s.stderr)
	}
	s.Addr, s.Fingerprint = m[1], m[2]
	return s
}

// stop ends the server as Ctrl-C would; it must return no error.
func (s *serverCommand) stop() {
	s.stopOnce.Do(func() {
		s.cancel()
		select {
		case err := <-s.errc:
			if err != nil {
				s.t.Errorf("server command: %v", err)
			}
		case <-time.After(2 * eventually):
			s.t.Error("server command did not stop")
		}
		s.t.Logf("server command stdout:\n%s\nstderr:\n%s", &s.stdout, &s.stderr)
	})
}

type agentCommand struct {
	stdout, stderr testutil.Buffer
	cancel         context.CancelFunc
	errc           chan error
	stopOnce       sync.Once
	err            error
}

// startAgentCommand runs the agent command with args until the test ends;
// it must then stop cleanly.
func startAgentCommand(t *testing.T, args ...string) *agentCommand {
	ctx, cancel := context.WithCancel(context.Background())
	a := &agentCommand{cancel: cancel, errc: make(chan error, 1)}
	go func() { a.errc <- cli.Agent(ctx, args, &a.stdout, &a.stderr) }()
	t.Cleanup(func() {
		if err := a.stop(); err != nil {
			t.Errorf("agent command: %v", err)
		}
		t.Logf("agent command stdout:\n%s\nstderr:\n%s", &a.stdout, &a.stderr)
	})
	return a
}

// stop ends the agent as Ctrl-C would and returns its error.
func (a *agentCommand) stop() error {
	a.stopOnce.Do(func() {
		a.cancel()
		select {
		case a.err = <-a.errc:
		case <-time.After(2 * eventually):
			a.err = errors.New("did not stop")
		}
	})
	return a.err
}

var tunnelLine = regexp.MustCompile(`(?m)^([a-z0-9-]+): tcp://(\S+) -> (\S+)$`)

// tunnel waits for the agent to print the public address of name and
// returns it.
func (a *agentCommand) tunnel(t *testing.T, name string) string {
	t.Helper()
	deadline := time.After(eventually)
	for {
		for _, m := range tunnelLine.FindAllStringSubmatch(a.stdout.String(), -1) {
			if m[1] == name {
				return m[2]
			}
		}
		select {
		case err := <-a.errc:
			a.errc <- err
			t.Fatalf("agent command ended: %v\nstderr:\n%s", err, &a.stderr)
		case <-deadline:
			t.Fatalf("agent command never printed the tunnel %s; stdout:\n%s\nstderr:\n%s", name, &a.stdout, &a.stderr)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// expectTurnedAway fails t unless a visitor of addr is refused promptly,
// with no data: its connection is reset or closed, perhaps before the dial
// even returns.
func expectTurnedAway(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, promptly)
	if err != nil {
		if isTimeout(err) {
			t.Fatalf("visitor dial %s: %v", addr, err)
		}
		return
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(promptly))
	n, err := io.Copy(io.Discard, c)
	if isTimeout(err) {
		t.Fatalf("visitor of %s still connected after %v", addr, promptly)
	}
	if n != 0 {
		t.Fatalf("visitor of %s got %d bytes", addr, n)
	}
}

// load keeps workers calling a function until stopped, and counts the
// outcomes of the calls that started after mark.
type load struct {
	marked     atomic.Bool
	failed, ok atomic.Int64
	stop       chan struct{}
	wg         sync.WaitGroup
}

// startLoad runs workers goroutines calling do(worker, call) in a loop.
func startLoad(t *testing.T, workers int, do func(worker, call int) error) *load {
	l := &load{stop: make(chan struct{})}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				after := l.marked.Load()
				err := do(w, i)
				switch {
				case !after:
				case err != nil:
					l.failed.Add(1)
					t.Logf("call after the mark failed: %v", err)
				default:
					l.ok.Add(1)
				}
			}
		}()
	}
	return l
}

// mark starts counting.
func (l *load) mark() { l.marked.Store(true) }

// finish stops the workers and fails t unless every call started after the
// mark succeeded, and some did.
func (l *load) finish(t *testing.T, what string) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	if l.failed.Load() != 0 || l.ok.Load() == 0 {
		t.Fatalf("after %s: %d calls failed, %d succeeded", what, l.failed.Load(), l.ok.Load())
	}
}
