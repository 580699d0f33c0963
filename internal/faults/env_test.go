package faults

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// domain is the --domain of gateways that serve HTTP by host name.
const domain = "faults.test"

// Tokens every case's gateway knows: the control agent's and a tester's
// that may publish any name.
const (
	controlToken = "control-token"
	testerToken  = "tester-token"
	baseTokens   = `- token: control-token
  names: ["control"]
  identity: control
- token: tester-token
  names: ["*"]
  identity: tester
`
)

// How far above its baseline a gateway may stay after a case: the
// profiler's own request, a connection being closed.
const (
	goroutineMargin = 2
	fdMargin        = 2
)

// gatewayConfig is what a case asks of its gateway.
type gatewayConfig struct {
	args   []string      // further flags
	http   bool          // --domain, with an HTTP port on loopback
	https  bool          // and an HTTPS port with a test certificate
	tokens string        // further entries of the tokens file (YAML list items)
	ports  int           // public ports in the window; default 8
	lease  time.Duration // --lease; default 2s, so that leases end within a case
}

// gateway is a running diglett-server.
type gateway struct {
	*proc
	addr, fp, debug     string // agent address, key fingerprint, profiler address
	httpAddr, httpsAddr string
	args                []string // flags without the listen addresses, for restarts
	https               bool
}

var (
	bannerRE   = regexp.MustCompile(`diglett-server listening on (\S+)\ngateway key fingerprint: (SHA256:\S+)\n`)
	profilerRE = regexp.MustCompile(`serving the profiler" url=http://(\S+)/debug/pprof/`)
	httpRE     = regexp.MustCompile(`msg="serving tunnels over HTTP" addr=(\S+)`)
	httpsRE    = regexp.MustCompile(`msg="serving tunnels over HTTPS" addr=(\S+)`)
)

// launchGateway starts diglett-server with args and the given listen
// addresses ("" for a port of the kernel's choice) and waits until it
// serves.
func launchGateway(c *tc, args []string, listen, httpAddr, httpsAddr string, withHTTP, withHTTPS bool) *gateway {
	c.Helper()
	g := &gateway{args: args, https: withHTTPS}
	full := append([]string{"-l", or(listen, "127.0.0.1:0")}, args...)
	if withHTTP {
		full = append(full, "--http-addr", or(httpAddr, "127.0.0.1:0"))
	}
	if withHTTPS {
		full = append(full, "--https-addr", or(httpsAddr, "127.0.0.1:0"))
	}
	g.proc = startProc(c, "diglett-server", bin.server, full...)
	c.Cleanup(func() {
		g.stop(12 * time.Second)
		if s := g.crashed(); s != "" {
			c.Errorf("gateway crashed: %s", s)
		}
	})
	m := g.mustMatch(c, g.stdout, bannerRE, 20*time.Second)
	g.addr, g.fp = m[1], m[2]
	g.debug = g.mustMatch(c, g.stderr, profilerRE, 5*time.Second)[1]
	if withHTTP {
		g.httpAddr = g.mustMatch(c, g.stderr, httpRE, 5*time.Second)[1]
	}
	if withHTTPS {
		g.httpsAddr = g.mustMatch(c, g.stderr, httpsRE, 5*time.Second)[1]
	}
	return g
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// restart stops the gateway (SIGTERM) and starts it again with the same
// flags and addresses.
func (g *gateway) restart(c *tc) *gateway {
	c.Helper()
	g.stop(12 * time.Second)
	if code, _ := g.waitExit(0); code != 0 {
		c.Fatalf("gateway exited with code %d on SIGTERM: %s", code, oneLine(g.stderr.tail(400)))
	}
	return launchGateway(c, g.args, g.addr, g.httpAddr, g.httpsAddr, g.httpAddr != "", g.https)
}

// counts reads the gateway's goroutines and descriptors.
func (g *gateway) counts() (counts, error) { return readCounts(g.debug, g.pid()) }

// env is a case's gateway with its control tunnel: an agent publishing an
// echo backend, checked with checksummed round trips during and after the
// case.
type env struct {
	cfg     gatewayConfig
	dir     string
	gw      *gateway
	lo, hi  int // public port window
	echo    string
	control string // the control tunnel's public TCP address
	base    counts

	loop                 *controlLoop
	roundTrips, failures int64
	firstFailure         error

	mu     sync.Mutex
	agents []*agent // the case's agents, stopped before the final checks
}

func startEnv(c *tc, cfg gatewayConfig) *env {
	c.Helper()
	e := &env{cfg: cfg, dir: c.TempDir()}
	e.lo, e.hi = portWindow(c, max(cfg.ports, 8))
	tokens := filepath.Join(e.dir, "tokens.yaml")
	if err := os.WriteFile(tokens, []byte(baseTokens+cfg.tokens), 0o600); err != nil {
		c.Fatal(err)
	}
	args := []string{
		"--data-dir", filepath.Join(e.dir, "data"),
		"--debug-addr", "127.0.0.1:0",
		"--ports", fmt.Sprintf("%d-%d", e.lo, e.hi),
		"--public-bind", "127.0.0.1",
		"--lease", orDefault(cfg.lease, 2*time.Second).String(),
		"--tokens", tokens,
	}
	if cfg.http || cfg.https {
		args = append(args, "--domain", domain)
	}
	if cfg.https {
		cert, key := testCertificate(c)
		args = append(args, "--cert", cert, "--key", key)
	}
	args = append(args, cfg.args...)
	e.gw = launchGateway(c, args, "", "", "", cfg.http || cfg.https, cfg.https)

	e.echo = startEcho(c)
	// One session: a second one reconnects after a gateway restart at a
	// random moment (backoff with jitter), which would move the gateway's
	// counts after the baseline is taken.
	ctl := e.spawnAgent(c, agentSpec{names: []string{"control"}, token: controlToken, backend: e.echo, args: []string{"--connections", "1"}})
	e.control = ctl.tunnel(c, "control")
	if err := poll(10*time.Second, func() error { return roundTrip(e.control, 64<<10, 5*time.Second) }); err != nil {
		c.Fatalf("control tunnel: %v", err)
	}
	e.rebase(c)
	e.loop = startControlLoop(e.control)
	return e
}

// rebase takes the gateway's baseline: its counts once they hold still.
func (e *env) rebase(c *tc) {
	c.Helper()
	e.base = e.settled(c)
}

// settled returns the gateway's counts once they hold still.
func (e *env) settled(c *tc) counts {
	c.Helper()
	var prev counts
	err := poll(10*time.Second, func() error {
		n, err := e.gw.counts()
		if err != nil {
			return err
		}
		if n != prev {
			prev = n
			return fmt.Errorf("still moving: %v", n)
		}
		return nil
	})
	if err != nil {
		c.Fatalf("gateway baseline: %v", err)
	}
	return prev
}

// pause stops the control round trips (while the case restarts the
// gateway, say); resume waits for the control tunnel to serve again and
// starts them anew.
func (e *env) pause() {
	ok, failed, first := e.loop.halt()
	e.roundTrips += ok + failed
	e.failures += failed
	if e.firstFailure == nil {
		e.firstFailure = first
	}
}

func (e *env) resume(c *tc, within time.Duration) {
	c.Helper()
	if err := poll(within, func() error { return roundTrip(e.control, 64<<10, 2*time.Second) }); err != nil {
		c.Fatalf("control tunnel did not serve again within %v: %v", within, err)
	}
	e.loop = startControlLoop(e.control)
}

// finish stops the case's agents and runs the common checks: the control
// tunnel served throughout and still does, the gateway's goroutines and
// descriptors are back to the baseline within settle, and it is alive.
func (e *env) finish(c *tc, settle time.Duration) string {
	c.Helper()
	e.mu.Lock()
	agents := e.agents
	e.mu.Unlock()
	var wg sync.WaitGroup
	for _, a := range agents {
		wg.Add(1)
		go func() { defer wg.Done(); a.stop(5 * time.Second) }()
	}
	wg.Wait()
	e.pause()
	if e.failures > 0 {
		c.Errorf("control tunnel: %d of %d round trips failed during the case; first: %v", e.failures, e.roundTrips, e.firstFailure)
	}
	if err := roundTrip(e.control, 256<<10, 10*time.Second); err != nil {
		c.Errorf("control tunnel after the case: %v", err)
	}
	var last counts
	err := poll(settle, func() error {
		n, err := e.gw.counts()
		if err != nil {
			return err
		}
		last = n
		if n.goroutines > e.base.goroutines+goroutineMargin || n.fds > e.base.fds+fdMargin {
			return fmt.Errorf("gateway holds %v, baseline %v", n, e.base)
		}
		return nil
	})
	if err != nil {
		c.Errorf("left behind, %v after the case: %v", settle, err)
	}
	if e.gw.exited() {
		c.Errorf("gateway exited during the case: %v; %s", e.gw.waitErr, oneLine(e.gw.stderr.tail(300)))
	}
	if s := e.gw.crashed(); s != "" {
		c.Errorf("gateway crashed: %s", s)
	}
	return fmt.Sprintf("control tunnel intact (%d checksummed round trips); gateway back to %d goroutines / %d fds (baseline %d / %d), alive",
		e.roundTrips, last.goroutines, last.fds, e.base.goroutines, e.base.fds)
}

// controlLoop sends checksummed round trips through the control tunnel,
// five a second, until halted.
type controlLoop struct {
	stop, done  chan struct{}
	ok, failed  atomic.Int64
	mu          sync.Mutex
	firstFailed error
}

func startControlLoop(addr string) *controlLoop {
	l := &controlLoop{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for first := true; ; first = false {
			if !first {
				select {
				case <-l.stop:
					return
				case <-tick.C:
				}
			}
			if err := roundTrip(addr, 32<<10, 5*time.Second); err != nil {
				l.failed.Add(1)
				l.mu.Lock()
				if l.firstFailed == nil {
					l.firstFailed = fmt.Errorf("at %s: %w", time.Now().Format("15:04:05.000"), err)
				}
				l.mu.Unlock()
			} else {
				l.ok.Add(1)
			}
		}
	}()
	return l
}

func (l *controlLoop) halt() (ok, failed int64, first error) {
	close(l.stop)
	<-l.done
	return l.ok.Load(), l.failed.Load(), l.firstFailed
}

// agentSpec is what a case asks of an agent.
type agentSpec struct {
	names     []string
	token     string // default the tester's
	transport string // default tcp
	backend   string
	args      []string // further flags
	// pinFile, if set, is the known_gateways file, and the agent is not
	// given the fingerprint: it pins on first use or checks the file.
	pinFile string
	gateway string // default the env's gateway
}

// agent is a running diglett.
type agent struct {
	*proc
}

// newAgent starts an agent for the case; it is stopped before the final
// checks.
func (e *env) newAgent(c *tc, s agentSpec) *agent {
	c.Helper()
	a := e.spawnAgent(c, s)
	e.mu.Lock()
	e.agents = append(e.agents, a)
	e.mu.Unlock()
	return a
}

// spawnAgent starts an agent that runs until the case ends (the control
// agent).
func (e *env) spawnAgent(c *tc, s agentSpec) *agent {
	c.Helper()
	return &agent{startProc(c, "diglett", bin.agent, e.agentArgs(s)...)}
}

func (e *env) agentArgs(s agentSpec) []string {
	gw := or(s.gateway, e.gw.addr)
	tr := or(s.transport, "tcp")
	args := []string{"-g", gw, "-t", or(s.token, testerToken), "--transport", tr}
	if s.pinFile != "" {
		args = append(args, "--known-gateways", s.pinFile)
	} else {
		args = append(args, "--known-gateways", filepath.Join(e.dir, "known_gateways"), "--fingerprint", e.gw.fp)
	}
	if tr == "ws" {
		args = append(args, "--ws-addr", gw)
	}
	for _, n := range s.names {
		args = append(args, "-n", n)
	}
	return append(append(args, s.args...), s.backend)
}

// tunnel waits for the agent to print the public TCP address of name.
func (a *agent) tunnel(c *tc, name string) string {
	c.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `: tcp://(\S+) -> `)
	return a.mustMatch(c, a.stdout, re, 15*time.Second)[1]
}

// host is NAME.DOMAIN with the port of addr: the Host of a request for
// tunnel name on the ingress at addr.
func host(name, addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return name + "." + domain + ":" + port
}

// portOf is the port number of a host:port address.
func portOf(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}

var certOnce struct {
	sync.Once
	cert, key string
	err       error
}

// testCertificate is a self-signed certificate for *.faults.test (and
// 127.0.0.1), written once for the whole suite.
func testCertificate(c *tc) (certFile, keyFile string) {
	c.Helper()
	certOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			certOnce.err = err
			return
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1),
			Subject:      pkix.Name{CommonName: "*." + domain},
			DNSNames:     []string{"*." + domain, domain, "localhost"},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			certOnce.err = err
			return
		}
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			certOnce.err = err
			return
		}
		certOnce.cert = filepath.Join(bin.dir, "cert.pem")
		certOnce.key = filepath.Join(bin.dir, "key.pem")
		if err := os.WriteFile(certOnce.cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
			certOnce.err = err
			return
		}
		certOnce.err = os.WriteFile(certOnce.key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	})
	if certOnce.err != nil {
		c.Fatalf("test certificate: %v", certOnce.err)
	}
	return certOnce.cert, certOnce.key
}

// lines counts the lines of s that match re.
func lines(s string, re *regexp.Regexp) int {
	n := 0
	for _, l := range strings.Split(s, "\n") {
		if re.MatchString(l) {
			n++
		}
	}
	return n
}
