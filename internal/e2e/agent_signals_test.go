package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

// buildAgent builds the agent binary into a directory of the test.
func buildAgent(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "diglett")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/diglett")
	build.Dir = repoRoot
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// agentProcess is the agent binary running.
type agentProcess struct {
	cmd            *exec.Cmd
	stdout, stderr testutil.Buffer
	exited         chan struct{}
	err            error // Wait's, once exited is closed
}

// startAgentProcess runs the agent binary with args and env (added to
// this process's environment); it is killed if still running when the
// test ends.
func startAgentProcess(t *testing.T, bin string, env []string, args ...string) *agentProcess {
	t.Helper()
	p := &agentProcess{cmd: exec.Command(bin, args...), exited: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			p.cmd.Process.Kill()
			<-p.exited
		}
		t.Logf("agent stdout:\n%s\nstderr:\n%s", &p.stdout, &p.stderr)
	})
	return p
}

// tunnel waits for the agent to print the public address of name.
func (p *agentProcess) tunnel(t *testing.T, name string) string {
	t.Helper()
	line := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `: tcp://(\S+) -> `)
	var addr string
	err := testutil.Poll(eventually, func() error {
		select {
		case <-p.exited:
			return fmt.Errorf("agent exited: %v", p.err)
		default:
		}
		m := line.FindStringSubmatch(p.stdout.String())
		if m == nil {
			return errors.New("no tunnel line yet")
		}
		addr = m[1]
		return nil
	})
	if err != nil {
		t.Fatalf("agent never printed the tunnel %s (%v); stderr:\n%s", name, err, &p.stderr)
	}
	return addr
}

func (p *agentProcess) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

// waitExit waits up to within for the agent to exit and returns its exit
// status.
func (p *agentProcess) waitExit(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(within):
		t.Fatalf("agent still running %v later; stderr:\n%s", within, &p.stderr)
	}
	var ee *exec.ExitError
	switch {
	case p.err == nil:
		return 0
	case errors.As(p.err, &ee) && ee.Exited():
		return ee.ExitCode()
	}
	t.Fatalf("agent ended with %v", p.err)
	return -1
}

// halfClosedVisitors opens n visitor connections to addr that send a line
// and half-close, and waits until the backend has seen every EOF.
func halfClosedVisitors(t *testing.T, addr string, n int, eofs interface{ Load() int64 }) []*net.TCPConn {
	t.Helper()
	conns := make([]*net.TCPConn, 0, n)
	for i := range n {
		c := dialVisitor(t, addr)
		fmt.Fprintf(c, "visitor %d\n", i)
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	if err := testutil.Poll(eventually, func() error {
		if got := eofs.Load(); got < int64(n) {
			return fmt.Errorf("the backend saw %d of %d EOFs", got, n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return conns
}

// TestAgentStopsWithHalfClosedVisitors: visitors half-close on a tunnel
// whose backend never answers nor closes; on SIGTERM the agent drains,
// and when the drain time is up it closes both sides of every relay and
// exits with status 0.
func TestAgentStopsWithHalfClosedVisitors(t *testing.T) {
	parallel(t)
	const drain = time.Second
	bin := buildAgent(t)
	g := startGateway(t, gatewayOptions{})
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	eofs := silentBackend(t, bl)
	p := startAgentProcess(t, bin, []string{"DIGLETT_DRAIN_TIMEOUT=" + drain.String()},
		"-g", g.Addr, "-n", "stuck", "--known-gateways", filepath.Join(t.TempDir(), "kg"), bl.Addr().String())
	conns := halfClosedVisitors(t, p.tunnel(t, "stuck"), 50, eofs)

	p.signal(t, syscall.SIGTERM)
	stopped := time.Now()
	if code := p.waitExit(t, drain+promptly); code != 0 {
		t.Errorf("agent exit status %d; want 0", code)
	}
	t.Logf("agent exited %v after SIGTERM (drain timeout %v)", time.Since(stopped).Round(time.Millisecond), drain)
	// Its relays are gone: the gateway ends the visitors' connections.
	for _, c := range conns {
		expectClosed(t, c, promptly)
	}
}

// TestAgentSecondSignal: while the agent drains (for a minute here), a
// second signal makes it exit at once, with status 1.
func TestAgentSecondSignal(t *testing.T) {
	parallel(t)
	bin := buildAgent(t)
	g := startGateway(t, gatewayOptions{})
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	eofs := silentBackend(t, bl)
	p := startAgentProcess(t, bin, []string{"DIGLETT_DRAIN_TIMEOUT=1m"},
		"-g", g.Addr, "-n", "stuck", "--known-gateways", filepath.Join(t.TempDir(), "kg"), bl.Addr().String())
	conns := halfClosedVisitors(t, p.tunnel(t, "stuck"), 1, eofs)

	p.signal(t, syscall.SIGTERM)
	waitFor(t, "agent", &p.stderr, "shutting down: waiting for open connections")
	p.signal(t, syscall.SIGINT)
	if code := p.waitExit(t, atOnce); code != 1 {
		t.Errorf("agent exit status %d; want 1", code)
	}
	waitFor(t, "agent", &p.stderr, "second signal: exiting now")
	expectClosed(t, conns[0], promptly)
}

// TestAgentRelaysEndWithSession: when the session carrying half-closed
// relays is cut, the agent closes both sides of each at once, rather than
// waiting for a backend that never speaks.
func TestAgentRelaysEndWithSession(t *testing.T) {
	checkLeaks(t)
	g := startGateway(t, gatewayOptions{})
	px := startProxy(t, g.Addr)
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := startAgentCommand(t, "-g", px.Addr(), "-n", "cut", "--known-gateways", filepath.Join(t.TempDir(), "kg"), bl.Addr().String())
	eofs := silentBackend(t, bl)
	halfClosedVisitors(t, a.tunnel(t, "cut"), 20, eofs)
	if n := testutil.GoroutinesIn("internal/relay.oneWay"); n == 0 {
		t.Fatal("no relay running")
	}
	px.Kill()
	cut := time.Now()
	if err := testutil.Poll(promptly, func() error {
		if n := testutil.GoroutinesIn("internal/relay.oneWay"); n != 0 {
			return fmt.Errorf("%d relay directions still running", n)
		}
		return nil
	}); err != nil {
		t.Fatalf("%v %v after the session was cut", err, time.Since(cut).Round(time.Millisecond))
	}
}
