package faults

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/diglett/diglett/internal/protocol"
)

// The defects of the hardening issue, one case each (the smaller ones of
// item 11 split in four). Each failed on the code before its fix.
var defectCases = []faultCase{
	{
		name:    "01-state-files",
		tried:   "gateway.key a symlink to a missing file; leases.json a directory; a key file readable by others",
		timeout: 40 * time.Second,
		run:     stateFiles,
	},
	{
		name:    "02-agent-stop",
		tried:   "SIGTERM to an agent whose 50 visitors half-closed on a backend that never closes (--drain-timeout 2s); SIGTERM then SIGINT to another (--drain-timeout 60s)",
		gateway: &gatewayConfig{},
		run:     agentStop,
	},
	{
		name:    "03-half-closed-visitors",
		tried:   "500 visitors half-close and leave a tunnel whose backend stays silent (--half-close-timeout 2s); 620 visitors against --max-visitors-per-tunnel 600",
		gateway: &gatewayConfig{args: []string{"--half-close-timeout", "2s", "--max-visitors-per-tunnel", "600"}},
		run:     halfClosedReaped,
	},
	{
		name:      "04-handshake-flood",
		tried:     "1,100 idle connections to the agent port from 127.0.0.3; 40 from the agents' own address; 1,140 from 38 addresses sending one byte each (over the global cap of 1,024)",
		gateway:   &gatewayConfig{ports: 12},
		exclusive: true,
		timeout:   120 * time.Second,
		settle:    20 * time.Second,
		run:       handshakeFlood,
	},
	{
		name:      "05-login-guessing",
		tried:     "2,000 wrong tokens from 127.0.0.3, 16 at a time; a good token from 127.0.0.1 during and after",
		gateway:   &gatewayConfig{},
		exclusive: true,
		timeout:   150 * time.Second,
		run:       loginGuessing,
	},
	{
		name:  "06-leases-restart",
		tried: "agent A (alice) holds name shared on port P, frozen; the gateway restarts on the same data dir; bob asks for the name, then for port P; A resumes",
		gateway: &gatewayConfig{lease: time.Minute, tokens: `- token: alice-token
  names: ["shared"]
  identity: alice
- token: bob-token
  names: ["shared", "other"]
  identity: bob
`},
		timeout: 120 * time.Second,
		run:     leasesRestart,
	},
	{
		name:    "07-forwarded-headers",
		tried:   "a visitor sends X-Forwarded-Port/-Prefix/-Ssl/-Scheme/-Server/-Uri, X-Real-IP, True-Client-IP, X-Client-IP, Client-IP, X_Forwarded_For, X_Real_IP; then Host NAME.DOMAIN:1,evil.com",
		gateway: &gatewayConfig{http: true},
		run:     forwardedHeaders,
	},
	{
		name:    "08-trickling-bodies",
		tried:   "300 POSTs from one address announcing 100 MB, one byte every 3s (--http-body-timeout 2s, --http-max-requests-per-source 50); a slow upload from another address, one byte a second",
		gateway: &gatewayConfig{http: true, args: []string{"--http-body-timeout", "2s", "--http-max-requests-per-source", "50"}},
		run:     tricklingBodies,
	},
	{
		name:      "09-quic-recovery",
		tried:     "an idle agent over QUIC (--keep-alive-period 500ms, gateway 2s; --max-idle-timeout 4s on both) frozen with SIGSTOP for 5s, then SIGCONT",
		gateway:   &gatewayConfig{args: []string{"--keep-alive-period", "2s", "--max-idle-timeout", "4s"}},
		exclusive: true,
		run:       quicRecovery,
	},
	{
		name:      "09b-tcp-recovery",
		tried:     "an idle agent over TLS (--keep-alive-period 500ms, gateway 1s; --max-idle-timeout 4s on both) frozen with SIGSTOP for 5s, then SIGCONT",
		gateway:   &gatewayConfig{args: []string{"--keep-alive-period", "1s", "--max-idle-timeout", "4s"}},
		exclusive: true,
		run:       tcpRecovery,
	},
	{
		name:  "10-quotas",
		tried: "a token allowed demo-* under --max-names-per-identity 5 registers demo-1..5, then demo-6; another identity asks for a port",
		gateway: &gatewayConfig{ports: 8, args: []string{"--max-names-per-identity", "5"}, tokens: `- token: quota-token
  names: ["demo-*"]
  identity: quota
- token: other-token
  names: ["other-*"]
  identity: other
`},
		run: quotas,
	},
	{
		name:    "11a-h2c-upgrade",
		tried:   "a visitor sends Upgrade: h2c (with HTTP2-Settings) to a tunnel whose backend is not h2c",
		gateway: &gatewayConfig{http: true},
		run:     h2cUpgrade,
	},
	{
		name:  "11b-gateway-error-sanitized",
		tried: "a gateway of the test's own refuses the login with an error text holding an escape sequence, a carriage return and a newline",
		run:   errorSanitized,
	},
	{
		name:    "11c-known-gateways",
		tried:   "a known_gateways file with a malformed line; four sessions pinning a new gateway at once",
		gateway: &gatewayConfig{},
		run:     knownGateways,
	},
	{
		name:    "11d-idle-below-keepalive",
		tried:   "gateway and agent with --max-idle-timeout 4s below --keep-alive-period 10s",
		gateway: &gatewayConfig{},
		run:     idleBelowKeepAlive,
	},
}

// standaloneGateway returns the flags of a gateway outside any env: data
// dir, loopback addresses and a small port window.
func standaloneGateway(c *tc, dataDir string, extra ...string) []string {
	lo, hi := portWindow(c, 2)
	return append([]string{"--data-dir", dataDir, "-l", "127.0.0.1:0", "--ports", fmt.Sprintf("%d-%d", lo, hi), "--public-bind", "127.0.0.1"}, extra...)
}

// expectRefusedStart runs diglett-server with args and requires it to
// exit non-zero within 5s with want in its output, and no crash.
func expectRefusedStart(c *tc, program, want string, args ...string) string {
	c.Helper()
	p := startProc(c, filepath.Base(program), program, args...)
	code, ok := p.waitExit(5 * time.Second)
	if !ok {
		p.signal(syscall.SIGKILL)
		c.Fatalf("%s %s still running after 5s; stderr: %s", p.name, strings.Join(args, " "), oneLine(p.stderr.tail(300)))
	}
	out := p.stderr.String() + p.stdout.String()
	if code == 0 {
		c.Fatalf("%s %s exited 0; output: %s", p.name, strings.Join(args, " "), oneLine(out))
	}
	if s := p.crashed(); s != "" {
		c.Fatalf("%s crashed: %s", p.name, s)
	}
	if !strings.Contains(out, want) {
		c.Fatalf("%s exited %d without naming %q: %s", p.name, code, want, oneLine(out))
	}
	return lastLine(p.stderr.String())
}

// lastLine is the last line of a program's output: its error, for one
// that exits on one.
func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return oneLine(s[strings.LastIndexByte(s, '\n')+1:])
}

func stateFiles(c *tc, _ *env) string {
	// A dangling symlink in place of the key.
	dir := c.TempDir()
	if err := os.Symlink(filepath.Join(dir, "missing.key"), filepath.Join(dir, "gateway.key")); err != nil {
		c.Fatal(err)
	}
	msg1 := expectRefusedStart(c, bin.server, "gateway.key", standaloneGateway(c, dir)...)

	// A state file that exists and cannot be read: leases.json a directory.
	dir2 := c.TempDir()
	if err := os.Mkdir(filepath.Join(dir2, "leases.json"), 0o700); err != nil {
		c.Fatal(err)
	}
	msg2 := expectRefusedStart(c, bin.server, "leases.json", standaloneGateway(c, dir2)...)

	// A key file others may read: the gateway starts, and warns.
	dir3 := c.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	keyFile := filepath.Join(dir3, "gateway.key")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o644); err != nil {
		c.Fatal(err)
	}
	os.Chmod(keyFile, 0o644) // whatever the umask
	g := startProc(c, "diglett-server", bin.server, standaloneGateway(c, dir3)...)
	g.mustMatch(c, g.stdout, bannerRE, 20*time.Second)
	warn := regexp.MustCompile(`level=WARN[^\n]*gateway\.key`)
	if !warn.MatchString(g.stderr.String()) {
		c.Fatalf("gateway started with a key file of mode 0644 and no warning naming it; stderr: %s", oneLine(g.stderr.tail(600)))
	}
	return fmt.Sprintf("dangling key symlink: exit within 5s (%q); leases.json a directory: exit within 5s (%q); mode 0644 key: warned", msg1, msg2)
}

// dialHalfClosed dials n visitors of addr, each sending a few bytes
// and then half-closing, and returns them (open for reading).
func dialHalfClosed(c *tc, addr string, n int) []net.Conn {
	c.Helper()
	conns := make([]net.Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 50)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				errs[i] = err
				return
			}
			conns[i] = conn
			if _, err := conn.Write([]byte("hello, and goodbye")); err != nil {
				errs[i] = err
				return
			}
			errs[i] = conn.(*net.TCPConn).CloseWrite()
		}()
	}
	wg.Wait()
	c.Cleanup(func() { closeAll(conns) })
	for i, err := range errs {
		if err != nil {
			c.Fatalf("visitor %d of %d: %v", i+1, n, err)
		}
	}
	return conns
}

func closeAll(conns []net.Conn) {
	for _, conn := range conns {
		if conn != nil {
			conn.Close()
		}
	}
}

// waitCount polls until f reaches want, for at most d.
func waitCount(c *tc, what string, f func() int64, want int64, d time.Duration) {
	c.Helper()
	if err := poll(d, func() error {
		if n := f(); n < want {
			return fmt.Errorf("%s: %d of %d", what, n, want)
		}
		return nil
	}); err != nil {
		c.Fatalf("%v after %v", err, d)
	}
}

func agentStop(c *tc, e *env) string {
	silent := startSilent(c)

	// A: drain time 2s, 50 half-closed visitors, SIGTERM.
	a := e.newAgent(c, agentSpec{names: []string{"stuck"}, backend: silent.addr, args: []string{"--drain-timeout", "2s"}})
	visitors := dialHalfClosed(c, a.tunnel(c, "stuck"), 50)
	waitCount(c, "half-closes reaching the backend", silent.gotEOF.Load, 50, 10*time.Second)
	start := time.Now()
	a.signal(syscall.SIGTERM)
	_, ok := a.waitExit(2*time.Second + 3*time.Second)
	tookA := time.Since(start)
	if !ok {
		n := -1
		if fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", a.pid())); err == nil {
			n = len(fds)
		}
		c.Fatalf("agent still running %v after SIGTERM (--drain-timeout 2s), holding %d descriptors; stderr: %s", tookA.Round(time.Millisecond), n, oneLine(a.stderr.tail(400)))
	}
	closeAll(visitors)

	// B: drain time 60s; the second signal must end it at once.
	b := e.newAgent(c, agentSpec{names: []string{"stuck2"}, backend: silent.addr, args: []string{"--drain-timeout", "60s"}})
	visitors = dialHalfClosed(c, b.tunnel(c, "stuck2"), 20)
	waitCount(c, "half-closes reaching the backend", silent.gotEOF.Load, 70, 10*time.Second)
	b.signal(syscall.SIGTERM)
	b.mustMatch(c, b.stderr, regexp.MustCompile(`(?i)shutting down|draining`), 5*time.Second)
	start = time.Now()
	b.signal(syscall.SIGINT)
	_, ok = b.waitExit(2 * time.Second)
	tookB := time.Since(start)
	if !ok {
		c.Fatalf("agent draining (--drain-timeout 60s) still running %v after a second signal; stderr: %s", tookB.Round(time.Millisecond), oneLine(b.stderr.tail(400)))
	}
	closeAll(visitors)
	return fmt.Sprintf("agent with 50 half-closed visitors exited %.1fs after SIGTERM (--drain-timeout 2s); a draining agent exited %.2fs after a second signal",
		tookA.Seconds(), tookB.Seconds())
}

func halfClosedReaped(c *tc, e *env) string {
	silent := startSilent(c)
	a := e.newAgent(c, agentSpec{names: []string{"silent"}, backend: silent.addr})
	addr := a.tunnel(c, "silent")
	base := e.settled(c) // with the agent's sessions

	// 500 visitors half-close, then leave for good.
	visitors := dialHalfClosed(c, addr, 500)
	waitCount(c, "half-closes reaching the backend", silent.gotEOF.Load, 500, 20*time.Second)
	closeAll(visitors)
	left := time.Now()
	var last counts
	if err := poll(2*time.Second+5*time.Second, func() error {
		n, err := e.gw.counts()
		last = n
		if err != nil {
			return err
		}
		if n.goroutines > base.goroutines+goroutineMargin || n.fds > base.fds+fdMargin {
			return fmt.Errorf("gateway holds %v, baseline %v", n, base)
		}
		return nil
	}); err != nil {
		c.Fatalf("500 visitors that half-closed and left are not reaped 7s later (--half-close-timeout 2s): %v", err)
	}
	reaped := time.Since(left)

	// The per-tunnel cap: 600 visitors held, the next ones refused at once.
	const held = 600
	conns := make([]net.Conn, 0, held)
	c.Cleanup(func() { closeAll(conns) })
	for i := range held {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			c.Fatalf("visitor %d of %d under the cap: %v", i+1, held, err)
		}
		conns = append(conns, conn)
		conn.Write([]byte("x"))
	}
	waitCount(c, "visitors under the cap reaching the backend", silent.accepted.Load, 500+held, 20*time.Second)
	refused := 0
	for range 20 {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			refused++
			continue
		}
		conn.Write([]byte("x"))
		if closed, _ := closedWithin(conn, 2*time.Second); closed {
			refused++
		}
		conn.Close()
	}
	if n := silent.accepted.Load(); refused != 20 || n != 500+held {
		c.Fatalf("--max-visitors-per-tunnel 600: %d of 20 visitors over the cap refused within 2s, backend reached %d times (want %d)", refused, n, 500+held)
	}
	// Still serving under the cap once the held visitors leave.
	closeAll(conns)
	conns = conns[:0]
	return fmt.Sprintf("500 half-closed visitors reaped %.1fs after they left (gateway at %v, baseline %v); 20 visitors over the cap of 600 refused at once",
		reaped.Seconds(), last, base)
}

func handshakeFlood(c *tc, e *env) string {
	flood := func(sources []string, per int, firstByte bool) []net.Conn {
		var mu sync.Mutex
		var conns []net.Conn
		var wg sync.WaitGroup
		sem := make(chan struct{}, 64)
		for _, src := range sources {
			for range per {
				wg.Add(1)
				sem <- struct{}{}
				go func() {
					defer wg.Done()
					defer func() { <-sem }()
					d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: localAddr(src)}
					conn, err := d.Dial("tcp", e.gw.addr)
					if err != nil {
						return // refused at once: fine
					}
					if firstByte {
						conn.Write([]byte{0x16}) // a TLS record's first byte, and nothing more
					}
					mu.Lock()
					conns = append(conns, conn)
					mu.Unlock()
				}()
			}
		}
		wg.Wait()
		c.Cleanup(func() { closeAll(conns) })
		return conns
	}
	// connects starts an agent over each transport and requires each to
	// serve within d of its start.
	connects := func(prefix string, d time.Duration, transports ...string) {
		agents := make([]*agent, len(transports))
		for i, tr := range transports {
			agents[i] = e.newAgent(c, agentSpec{names: []string{prefix + "-" + tr}, transport: tr, backend: e.echo})
		}
		for i, tr := range transports {
			m, err := agents[i].waitMatch(agents[i].stdout, regexp.MustCompile(`(?m)^`+prefix+"-"+tr+`: tcp://(\S+) -> `), d)
			if err != nil {
				c.Fatalf("during the flood, a new agent over %s did not connect within %v: %v; stderr: %s", tr, d, err, oneLine(agents[i].stderr.tail(400)))
			}
			if err := roundTrip(m[1], 64<<10, 10*time.Second); err != nil {
				c.Fatalf("agent over %s during the flood: %v", tr, err)
			}
		}
	}

	// 1,100 idle connections from one address.
	start := time.Now()
	idle := flood([]string{"127.0.0.3"}, 1100, false)
	connects("one", 10*time.Second, "tcp", "quic", "ws")
	// Every one of them is closed within the first-byte deadline (3s)
	// and a margin, counted from when the flood started.
	var open atomic.Int64
	var wg sync.WaitGroup
	for _, conn := range idle {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A connection closed before the deadline reads EOF at once.
			wait := max(time.Until(start.Add(3*time.Second+4*time.Second)), 100*time.Millisecond)
			if closed, _ := closedWithin(conn, wait); !closed {
				open.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := open.Load(); n > 0 {
		c.Fatalf("%d of %d idle connections from 127.0.0.3 still open 7s after they were made (they sent nothing)", n, len(idle))
	}
	closeAll(idle)

	// 40 idle connections from the agents' own address: a new agent is
	// told the gateway is busy, retries, and gets in once they are gone.
	own := flood([]string{"127.0.0.1"}, 40, false)
	busy := e.newAgent(c, agentSpec{names: []string{"busy"}, backend: e.echo})
	if _, err := busy.waitMatch(busy.stdout, regexp.MustCompile(`(?m)^busy: tcp://`), 20*time.Second); err != nil {
		c.Fatalf("an agent refused while its address held 40 idle connections did not get in once they were closed: %v; stderr: %s", err, oneLine(busy.stderr.tail(400)))
	}
	if !regexp.MustCompile(`(?i)busy`).MatchString(busy.stderr.String()) {
		c.Errorf("an agent refused while its address held 40 idle connections did not report the gateway busy; stderr: %s", oneLine(busy.stderr.tail(400)))
	}
	closeAll(own)

	// 1,140 connections from 38 addresses, 30 each (under the per-source
	// cap), each having sent a byte: over the global cap of 1,024. A new
	// agent still gets in, well before the handshake timeout (10s).
	var sources []string
	for i := range 38 {
		sources = append(sources, fmt.Sprintf("127.0.0.%d", 10+i))
	}
	wide := flood(sources, 30, true)
	connects("wide", 5*time.Second, "tcp", "quic")
	closeAll(wide)
	return fmt.Sprintf("agents over tcp, quic and ws connected during a flood of %d idle connections from one address, all of which were closed within 7s; an agent whose own address held 40 reported the gateway busy and got in; agents got in within 5s past %d connections from 38 addresses",
		len(idle), len(wide))
}

func loginGuessing(c *tc, e *env) string {
	const guesses, workers = 2000, 16
	linesBefore := e.gw.stderr.Lines()
	start := time.Now()
	var (
		mu       sync.Mutex
		outcomes = map[string]int{}
		next     atomic.Int64
		wg       sync.WaitGroup
	)
	goodDuring := make(chan time.Duration, 1)
	goodErr := make(chan error, 1)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > guesses || c.ctx.Err() != nil {
					return
				}
				if i == guesses/2 {
					go func() {
						t0 := time.Now()
						r, err := login(localAddr("127.0.0.1"), e.gw.addr, testerToken, 10*time.Second)
						if err == nil && r != "ok" {
							err = fmt.Errorf("refused: %s", r)
						}
						goodErr <- err
						goodDuring <- time.Since(t0)
					}()
				}
				r, err := login(localAddr("127.0.0.3"), e.gw.addr, fmt.Sprintf("wrong-%d", i), 10*time.Second)
				if err != nil {
					r = "no answer"
				}
				mu.Lock()
				outcomes[r]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	if err := <-goodErr; err != nil {
		c.Fatalf("a good token from 127.0.0.1 during the guessing: %v", err)
	}
	during := <-goodDuring
	logLines := e.gw.stderr.Lines() - linesBefore
	t0 := time.Now()
	r, err := login(localAddr("127.0.0.1"), e.gw.addr, testerToken, 10*time.Second)
	after := time.Since(t0)
	if err != nil || r != "ok" {
		c.Fatalf("a good token from 127.0.0.1 after the guessing: %q, %v", r, err)
	}
	summary := fmt.Sprintf("%v in %.1fs", outcomes, took.Seconds())
	switch total := outcomes["unauthorized"] + outcomes["too_many_failures"] + outcomes["no answer"]; {
	case c.ctx.Err() != nil:
		c.Fatalf("2,000 guesses did not end within the case's time: %s", summary)
	case outcomes["ok"] > 0:
		c.Fatalf("a wrong token logged in: %s", summary)
	case total != guesses:
		c.Fatalf("unexpected answers: %s", summary)
	case outcomes["too_many_failures"] < guesses/2 || outcomes["unauthorized"] > guesses/10:
		c.Fatalf("guesses from one address are not limited: %s", summary)
	case logLines > guesses/10:
		c.Fatalf("the gateway wrote %d log lines for 2,000 guesses: %s", logLines, summary)
	case during > 1500*time.Millisecond || after > 1500*time.Millisecond:
		c.Fatalf("a good login from another address took %v during the guessing and %v after", during, after)
	}
	return fmt.Sprintf("guesses answered %s; %d gateway log lines; good logins from 127.0.0.1 took %dms during and %dms after",
		summary, logLines, during.Milliseconds(), after.Milliseconds())
}

func leasesRestart(c *tc, e *env) string {
	echoA := startEcho(c)
	a := e.newAgent(c, agentSpec{names: []string{"shared"}, token: "alice-token", backend: echoA})
	addrP := a.tunnel(c, "shared")
	if err := roundTrip(addrP, 64<<10, 10*time.Second); err != nil {
		c.Fatalf("alice's tunnel: %v", err)
	}
	a.signal(syscall.SIGSTOP)
	e.pause()
	e.gw = e.gw.restart(c)
	e.resume(c, 30*time.Second)
	e.rebase(c)

	// bob, before alice is back: the name, then the port.
	refusedWith := func(what string, spec agentSpec) string {
		b := e.newAgent(c, spec)
		code, ok := b.waitExit(15 * time.Second)
		if !ok {
			c.Fatalf("after the restart, bob asking for %s was not refused: stdout: %s stderr: %s", what, oneLine(b.stdout.String()), oneLine(b.stderr.tail(300)))
		}
		if code == 0 {
			c.Fatalf("bob's agent exited 0: %s", oneLine(b.stderr.tail(300)))
		}
		return lastLine(b.stderr.String())
	}
	byName := refusedWith("alice's name", agentSpec{names: []string{"shared"}, token: "bob-token", backend: e.echo})
	byPort := refusedWith("alice's port", agentSpec{names: []string{"other"}, token: "bob-token", backend: e.echo, args: []string{"--port", fmt.Sprint(portOf(addrP))}})

	// alice resumes and gets her port back.
	a.signal(syscall.SIGCONT)
	if err := poll(30*time.Second, func() error { return roundTrip(addrP, 64<<10, 2*time.Second) }); err != nil {
		c.Fatalf("alice did not serve on her port %d again within 30s of resuming: %v; stderr: %s", portOf(addrP), err, oneLine(a.stderr.tail(400)))
	}
	return fmt.Sprintf("after the restart bob was refused the name (%q) and port %d (%q); alice resumed and served on port %d again",
		byName, portOf(addrP), byPort, portOf(addrP))
}

// spoofed are headers a visitor may not set: only the gateway vouches for
// forwarding information.
var spoofed = []string{
	"X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Ssl", "X-Forwarded-Scheme",
	"X-Forwarded-Server", "X-Forwarded-Uri", "X-Real-IP", "True-Client-IP", "X-Client-IP",
	"Client-IP", "X_Forwarded_For", "X_Real_IP",
}

// spoofedValue is what the visitor claims in every spoofed header.
const spoofedValue = "203.0.113.66"

func forwardedHeaders(c *tc, e *env) string {
	be := startHTTPBackend(c)
	e.newAgent(c, agentSpec{names: []string{"hdrs"}, backend: be.addr}).tunnel(c, "hdrs")
	waitHTTP(c, e.gw.httpAddr, "hdrs")
	before := len(be.seen())

	var req strings.Builder
	fmt.Fprintf(&req, "GET /spoof HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", host("hdrs", e.gw.httpAddr))
	for _, h := range spoofed {
		fmt.Fprintf(&req, "%s: %s\r\n", h, spoofedValue)
	}
	req.WriteString("\r\n")
	if r := rawHTTP(e.gw.httpAddr, req.String(), 10*time.Second); r.status != http.StatusOK {
		c.Fatalf("request with spoofed headers: %v", r)
	}
	seen := be.seen()
	if len(seen) != before+1 {
		c.Fatalf("backend saw %d requests, want 1", len(seen)-before)
	}
	var leaked []string
	got := seen[len(seen)-1].Header
	for k, v := range got {
		if strings.Contains(strings.Join(v, ","), spoofedValue) {
			leaked = append(leaked, k)
		}
	}
	if len(leaked) > 0 {
		slices.Sort(leaked)
		c.Errorf("headers from an untrusted visitor reached the backend: %s", strings.Join(leaked, ", "))
	}
	if xff := got.Get("X-Forwarded-For"); xff != "127.0.0.1" {
		c.Errorf("the backend got X-Forwarded-For %q, want the visitor's address 127.0.0.1", xff)
	}

	// A Host whose port is not a number.
	bad := "hdrs." + domain + ":1,evil.com"
	r := rawHTTP(e.gw.httpAddr, "GET /evil HTTP/1.1\r\nHost: "+bad+"\r\nConnection: close\r\n\r\n", 10*time.Second)
	if r.status != http.StatusBadRequest {
		c.Errorf("Host %s: got %v, want 400", bad, r)
	}
	if n := len(be.seen()); n != before+1 {
		c.Errorf("the request for Host %s reached the backend", bad)
	}
	return fmt.Sprintf("none of %d spoofed headers reached the backend; Host %s got %d", len(spoofed), bad, r.status)
}

func tricklingBodies(c *tc, e *env) string {
	be := startHTTPBackend(c)
	e.newAgent(c, agentSpec{names: []string{"trickle"}, backend: be.addr}).tunnel(c, "trickle")
	waitHTTP(c, e.gw.httpAddr, "trickle")
	h := host("trickle", e.gw.httpAddr)

	// A legitimate slow upload from another address: a byte a second.
	slow := make(chan response, 1)
	go func() {
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: localAddr("127.0.0.2")}
		conn, err := d.Dial("tcp", e.gw.httpAddr)
		if err != nil {
			slow <- response{err: err}
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		fmt.Fprintf(conn, "POST /slow HTTP/1.1\r\nHost: %s\r\nContent-Length: 6\r\nConnection: close\r\n\r\n", h)
		for _, b := range []byte("abcdef") {
			time.Sleep(time.Second) // the upload's pace
			if _, err := conn.Write([]byte{b}); err != nil {
				slow <- response{err: err}
				return
			}
		}
		slow <- readResponse(bufio.NewReader(conn))
	}()

	const n = 300
	type result struct {
		status int // 0: the connection ended without a response
		took   time.Duration
	}
	results := make([]result, n)
	// Connected first, then all the requests sent at once: all 300 are in
	// flight before the first can time out.
	conns := make([]net.Conn, n)
	for i := range n {
		conn, err := net.DialTimeout("tcp", e.gw.httpAddr, 5*time.Second)
		if err != nil {
			c.Fatalf("trickling visitor %d: %v", i+1, err)
		}
		c.Cleanup(func() { conn.Close() })
		conns[i] = conn
	}
	var wg sync.WaitGroup
	for i, conn := range conns {
		fmt.Fprintf(conn, "POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: 104857600\r\n\r\nx", h)
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			conn.SetDeadline(start.Add(20 * time.Second))
			done := make(chan struct{})
			go func() { // a byte every 3s, until the gateway ends it
				tick := time.NewTicker(3 * time.Second)
				defer tick.Stop()
				for {
					select {
					case <-done:
						return
					case <-tick.C:
						if _, err := conn.Write([]byte("x")); err != nil {
							return
						}
					}
				}
			}()
			r := readResponse(bufio.NewReader(conn))
			close(done)
			results[i] = result{status: r.status, took: time.Since(start)}
			conn.Close()
		}()
	}
	wg.Wait()
	s := <-slow
	statuses := map[int]int{}
	var longest time.Duration
	for _, r := range results {
		statuses[r.status]++
		longest = max(longest, r.took)
	}
	if err := poll(10*time.Second, func() error {
		if n := be.inFlight.Load(); n != 0 {
			return fmt.Errorf("%d requests still in the backend", n)
		}
		return nil
	}); err != nil {
		c.Errorf("after the trickling requests ended: %v", err)
	}
	summary := fmt.Sprintf("statuses %v (0: ended without a response), longest %.1fs, at most %d at once in the backend", statuses, longest.Seconds(), be.maxInFlight.Load())
	switch {
	case statuses[http.StatusTooManyRequests] < n-50-10:
		c.Fatalf("requests over the per-source cap of 50 were not refused with 429: %s", summary)
	case be.maxInFlight.Load() > 50+1:
		c.Fatalf("more than 50 requests from one address reached the backend at once: %s", summary)
	case longest > 2*time.Second+3*time.Second+2*time.Second:
		c.Fatalf("trickling requests were not ended by --http-body-timeout 2s: %s", summary)
	case s.status != http.StatusOK || !strings.Contains(s.body, "ok 6"):
		c.Fatalf("a slow upload that kept moving (a byte a second) failed: %v; %s", s, summary)
	}
	return fmt.Sprintf("300 trickling requests: %s; a slow upload from another address (a byte a second) got %v", summary, s)
}

func quicRecovery(c *tc, e *env) string {
	// The agent's keepalives (every 500ms) are all the gateway hears from
	// an idle agent: the gateway's last packet from it is at most 500ms
	// before the freeze, and the gateway's own keepalive (2s) is what
	// used to push its idle timer past the bound.
	return frozenAgent(c, e, "quic")
}

func tcpRecovery(c *tc, e *env) string {
	// Over TLS the multiplexer's keepalive slept until the answer's
	// deadline after each ping, so a peer that vanished just after
	// answering was noticed up to 2×(idle timeout − period) after its
	// last packet: 6s for this gateway (period 1s). The agent pings every
	// 500ms of silence now, and the gateway only when the agent does not.
	return frozenAgent(c, e, "tcp")
}

// frozenAgent freezes an idle agent over transport with SIGSTOP for 5s:
// the gateway (--max-idle-timeout 4s) must drop it within its idle
// timeout, and the agent serve again soon after SIGCONT.
func frozenAgent(c *tc, e *env, transport string) string {
	q := e.newAgent(c, agentSpec{names: []string{"frozen"}, transport: transport, backend: e.echo,
		args: []string{"--keep-alive-period", "500ms", "--max-idle-timeout", "4s"}})
	addr := q.tunnel(c, "frozen")
	if err := roundTrip(addr, 64<<10, 10*time.Second); err != nil {
		c.Fatalf("%s tunnel: %v", transport, err)
	}
	// The scenario is an idle agent: no stream data in flight when it
	// freezes, only keepalives.
	time.Sleep(time.Second)
	disconnected := regexp.MustCompile(`agent disconnected`)
	before := lines(e.gw.stderr.String(), disconnected)
	stopped := time.Now()
	q.signal(syscall.SIGSTOP)
	var noticed time.Duration
	err := poll(4*time.Second+4*time.Second, func() error {
		if lines(e.gw.stderr.String(), disconnected) == before {
			return fmt.Errorf("no %q", disconnected)
		}
		noticed = time.Since(stopped)
		return nil
	})
	if err != nil {
		q.signal(syscall.SIGCONT)
		c.Fatalf("gateway did not notice the frozen agent within 8s (--max-idle-timeout 4s)")
	}
	// Frozen for longer than the idle timeout (the scenario), and until
	// the gateway has dropped it.
	time.Sleep(time.Until(stopped.Add(5 * time.Second)))
	resumed := time.Now()
	q.signal(syscall.SIGCONT)
	if err := poll(15*time.Second, func() error { return roundTrip(addr, 16<<10, time.Second) }); err != nil {
		c.Fatalf("%s agent did not serve again within 15s of SIGCONT: %v", transport, err)
	}
	back := time.Since(resumed)
	if noticed > 4*time.Second+500*time.Millisecond {
		c.Errorf("gateway noticed the frozen agent %.2fs after SIGSTOP, past --max-idle-timeout 4s", noticed.Seconds())
	}
	if back > 2*time.Second {
		c.Errorf("the resumed agent served again %.2fs after SIGCONT, not within half the idle timeout (2s)", back.Seconds())
	}
	return fmt.Sprintf("gateway noticed the frozen agent %.2fs after SIGSTOP (--max-idle-timeout 4s); it served again %.2fs after SIGCONT",
		noticed.Seconds(), back.Seconds())
}

func quotas(c *tc, e *env) string {
	names := []string{"demo-1", "demo-2", "demo-3", "demo-4", "demo-5"}
	a := e.newAgent(c, agentSpec{names: names, token: "quota-token", backend: e.echo})
	for _, n := range names {
		a.tunnel(c, n)
	}
	sixth := e.newAgent(c, agentSpec{names: []string{"demo-6"}, token: "quota-token", backend: e.echo})
	m, err := sixth.waitMatch(sixth.stderr, regexp.MustCompile(`(?i)[^\n]*quota[^\n]*`), 10*time.Second)
	if err != nil {
		c.Fatalf("the 6th name of an identity with --max-names-per-identity 5: no refusal naming the quota: %v; stdout: %s", err, oneLine(sixth.stdout.String()))
	}
	if strings.Contains(sixth.stdout.String(), "demo-6: ") {
		c.Fatalf("the 6th name was published: %s", oneLine(sixth.stdout.String()))
	}
	if !regexp.MustCompile(`(?i)name`).MatchString(m[0]) {
		c.Errorf("the refusal does not say which quota: %s", oneLine(m[0]))
	}
	other := e.newAgent(c, agentSpec{names: []string{"other-1"}, token: "other-token", backend: e.echo})
	if err := roundTrip(other.tunnel(c, "other-1"), 64<<10, 10*time.Second); err != nil {
		c.Fatalf("another identity's tunnel: %v", err)
	}
	return fmt.Sprintf("5 names published, the 6th refused (%q); another identity got a port and served", oneLine(m[0]))
}

func h2cUpgrade(c *tc, e *env) string {
	be := startHTTPBackend(c)
	e.newAgent(c, agentSpec{names: []string{"plain"}, backend: be.addr}).tunnel(c, "plain")
	waitHTTP(c, e.gw.httpAddr, "plain")
	req := "GET /up HTTP/1.1\r\nHost: " + host("plain", e.gw.httpAddr) +
		"\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
	r := rawHTTP(e.gw.httpAddr, req, 10*time.Second)
	if r.status != http.StatusOK {
		c.Fatalf("request with Upgrade: h2c: %v", r)
	}
	seen := be.seen()
	last := seen[len(seen)-1]
	if up := last.Header.Get("Upgrade"); up != "" {
		c.Fatalf("the backend (not h2c) got Upgrade: %s", up)
	}
	return "answered 200 by the backend, which saw no Upgrade header"
}

func errorSanitized(c *tc, _ *env) string {
	fake := startFakeGateway(c, &protocol.Error{Code: "unauthorized", Message: "bad token\x1b[2J\x1b[31m\rforged\nlevel=INFO msg=forged-line"})
	dir := c.TempDir()
	a := startProc(c, "diglett", bin.agent, "-g", fake.addr, "--fingerprint", fake.fp, "--known-gateways", filepath.Join(dir, "known"),
		"--transport", "tcp", "-n", "victim", "-t", "whatever", "127.0.0.1:9")
	code, ok := a.waitExit(10 * time.Second)
	if !ok {
		c.Fatalf("agent refused by the gateway still running after 10s; stderr: %s", oneLine(a.stderr.tail(400)))
	}
	out := a.stderr.String() + a.stdout.String()
	if !strings.Contains(out, "forged") {
		c.Fatalf("agent exited %d without the gateway's message: %s", code, oneLine(out))
	}
	if strings.ContainsAny(out, "\x1b\r") {
		c.Errorf("agent printed the gateway's escape sequence or carriage return raw: %q", out)
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "level=INFO msg=forged-line") {
			c.Errorf("the gateway's message forged a line of the agent's output: %q", l)
		}
	}
	return fmt.Sprintf("agent exited %d printing %q", code, lastLine(out))
}

func knownGateways(c *tc, e *env) string {
	// A malformed line.
	bad := filepath.Join(c.TempDir(), "known_gateways")
	content := "this-line-has-no-fingerprint\n"
	if err := os.WriteFile(bad, []byte(content), 0o600); err != nil {
		c.Fatal(err)
	}
	a := e.newAgent(c, agentSpec{names: []string{"pinned"}, backend: e.echo, pinFile: bad})
	code, ok := a.waitExit(10 * time.Second)
	if !ok {
		c.Fatalf("agent with a malformed known_gateways line still running after 10s; stdout: %s stderr: %s", oneLine(a.stdout.String()), oneLine(a.stderr.tail(400)))
	}
	out := a.stderr.String()
	if code == 0 || !strings.Contains(out, bad) || !regexp.MustCompile(`(?i)line 1\b|:1\b`).MatchString(out) {
		c.Fatalf("agent with a malformed known_gateways line exited %d without naming the file and line 1: %s", code, oneLine(out))
	}
	if b, _ := os.ReadFile(bad); string(b) != content {
		c.Fatalf("known_gateways with a malformed line was changed: %q", b)
	}

	// Four sessions pinning the same new gateway at once: one line.
	fresh := filepath.Join(c.TempDir(), "known_gateways")
	p := e.newAgent(c, agentSpec{names: []string{"pinner"}, backend: e.echo, pinFile: fresh, args: []string{"--connections", "4"}})
	p.tunnel(c, "pinner")
	if err := poll(5*time.Second, func() error {
		b, _ := os.ReadFile(fresh)
		if n := len(strings.Fields(string(b))); n != 2 {
			return fmt.Errorf("known_gateways after pinning with 4 sessions: %q", b)
		}
		return nil
	}); err != nil {
		c.Fatal(err)
	}
	return fmt.Sprintf("malformed line refused (%q), file unchanged; 4 sessions pinning at once wrote one line", lastLine(out))
}

func idleBelowKeepAlive(c *tc, e *env) string {
	warn := regexp.MustCompile(`level=WARN[^\n]*(?i:keep-alive|keepalive|max-idle|idle)`)
	g := startProc(c, "diglett-server", bin.server, standaloneGateway(c, c.TempDir(), "--keep-alive-period", "10s", "--max-idle-timeout", "4s")...)
	g.mustMatch(c, g.stdout, bannerRE, 20*time.Second)
	if _, err := g.waitMatch(g.stderr, warn, 2*time.Second); err != nil {
		c.Errorf("gateway with --max-idle-timeout 4s below --keep-alive-period 10s: no warning; stderr: %s", oneLine(g.stderr.tail(600)))
	}
	a := e.newAgent(c, agentSpec{names: []string{"clamped"}, backend: e.echo, args: []string{"--keep-alive-period", "10s", "--max-idle-timeout", "4s"}})
	a.tunnel(c, "clamped")
	if _, err := a.waitMatch(a.stderr, warn, 2*time.Second); err != nil {
		c.Errorf("agent with --max-idle-timeout 4s below --keep-alive-period 10s: no warning; stderr: %s", oneLine(a.stderr.tail(600)))
	}
	return "gateway and agent both warned"
}
