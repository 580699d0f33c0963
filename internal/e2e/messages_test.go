package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/cli"
	"github.com/diglett/diglett/internal/cli/servercli"
	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/testutil/privilege"
)

// The messages a user reads when something is wrong, each produced by the
// real command line: what happened, what to do, and an error (the mains
// exit non-zero on it).

// runAgentCommand runs the agent command with args until it returns, which
// it must do within within, with an error, which it returns.
func runAgentCommand(t *testing.T, within time.Duration, args ...string) error {
	t.Helper()
	args = append([]string{"--known-gateways", filepath.Join(t.TempDir(), "known_gateways")}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*within)
	defer cancel()
	var stdout, stderr testutil.Buffer
	start := time.Now()
	err := cli.Agent(ctx, args, &stdout, &stderr)
	if took := time.Since(start); took > within {
		t.Errorf("the agent took %v to give up, want less than %v", took.Round(time.Millisecond), within)
	}
	if err == nil {
		t.Fatalf("the agent returned no error; stdout:\n%s\nstderr:\n%s", &stdout, &stderr)
	}
	return err
}

// runServerCommand runs the gateway command with args, which must fail at
// start, and returns its error. It may run on a goroutine of its own.
func runServerCommand(t *testing.T, args ...string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), eventually)
	defer cancel()
	var stdout, stderr testutil.Buffer
	err := servercli.Server(ctx, append(args, "--data-dir", t.TempDir(), "--no-quic"), &stdout, &stderr)
	if err == nil {
		t.Errorf("the gateway started; stdout:\n%s\nstderr:\n%s", &stdout, &stderr)
		return errors.New("the gateway started")
	}
	return err
}

func wantIn(t *testing.T, err error, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q\nlacks %q", err, w)
		}
	}
}

// An agent pointed at a port that answers plain HTTP (the gateway's HTTP
// ingress, say) is told it is not a gateway at once, without trying the
// other transports.
func TestMessageNotAGateway(t *testing.T) {
	parallel(t)
	web := httptest.NewServer(http.NotFoundHandler())
	defer web.Close()
	addr := web.Listener.Addr().String()
	err := runAgentCommand(t, atOnce, "-g", addr, "-n", "web", "9000")
	wantIn(t, err, "connect to gateway "+addr+" over tcp: it answers plain HTTP: not a diglett gateway; agents connect to the gateway's --listen port, 20000 by default")
}

// A gateway that nothing answers for at start: the agent names the
// address and says what to check, and that --retry keeps trying.
func TestMessageGatewayUnreachable(t *testing.T) {
	parallel(t)
	addr := unusedAddr(t)
	err := runAgentCommand(t, atOnce, "-g", addr, "-n", "web", "--transport", "tcp", "9000")
	wantIn(t, err, "gateway unreachable", addr, "connection refused",
		"check the host name, the port (the gateway's --listen, 20000 by default) and any firewall on the way; --retry keeps trying at start instead of exiting")
}

// -g HOST without a port means port 20000.
func TestMessageGatewayDefaultPort(t *testing.T) {
	parallel(t)
	err := runAgentCommand(t, atOnce, "-g", "127.0.0.3", "-n", "web", "--transport", "tcp", "9000")
	wantIn(t, err, "dial tcp 127.0.0.3:20000")
}

// With --retry the agent keeps trying while the gateway is down, and
// serves once it comes up.
func TestRetryAtStart(t *testing.T) {
	parallel(t)
	addr := unusedAddr(t)
	backend := startEcho(t)
	a := startAgentCommand(t, "-g", addr, "-n", "late", "--retry", "--transport", "tcp",
		"--known-gateways", filepath.Join(t.TempDir(), "known_gateways"), backend)
	waitFor(t, "the agent's retry", &a.stderr, "could not start, retrying (--retry)")
	lo, hi := randomPortWindow()
	startServerCommand(t, "-l", addr, "--no-quic", "--data-dir", t.TempDir(),
		"--ports", fmt.Sprintf("%d-%d", lo, hi), "--public-bind", "127.0.0.1")
	mustRoundTrip(t, a.tunnel(t, "late"), "hello after the retries")
}

// A gateway that takes tokens, and an agent that gives none: the agent
// says how to give one; a wrong token gets no such advice.
func TestMessageMissingToken(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	tokens := writeFile(t, dir, "tokens.yaml", "- token: s3cret\n  identity: alice\n  names: [web]\n")
	srv := startServerCommand(t, "-l", "127.0.0.1:0", "--no-quic", "--data-dir", t.TempDir(), "--tokens", tokens)

	err := runAgentCommand(t, atOnce, "-g", srv.Addr, "--fingerprint", srv.Fingerprint, "-n", "web", "9000")
	wantIn(t, err, "no credentials given that this gateway takes: give one with -t/--token-file, --user/--password-file or --identity-key")

	err = runAgentCommand(t, atOnce, "-g", srv.Addr, "--fingerprint", srv.Fingerprint, "-n", "web", "-t", "wrong", "9000")
	if strings.Contains(err.Error(), "give one with") || strings.Contains(err.Error(), "no credentials") {
		t.Errorf("a wrong token was told to give one: %v", err)
	}
}

// A backend given as a URL: http:// is its address, https:// is refused
// with the reason.
func TestBackendURL(t *testing.T) {
	parallel(t)
	lo, hi := randomPortWindow()
	srv := startServerCommand(t, "-l", "127.0.0.1:0", "--no-quic", "--data-dir", t.TempDir(),
		"--ports", fmt.Sprintf("%d-%d", lo, hi), "--public-bind", "127.0.0.1")
	backend := startEcho(t)
	a := startAgentCommand(t, "-g", srv.Addr, "--fingerprint", srv.Fingerprint, "-n", "web",
		"--known-gateways", filepath.Join(t.TempDir(), "known_gateways"), "http://"+backend+"/")
	mustRoundTrip(t, a.tunnel(t, "web"), "through a URL backend")

	err := runAgentCommand(t, atOnce, "-g", srv.Addr, "-n", "web", "https://"+backend)
	wantIn(t, err, "does not speak TLS to its backend")
}

// A port in use: the gateway says which, that another program (perhaps
// another gateway) holds it, and which flag chooses another.
func TestMessageAddressInUse(t *testing.T) {
	parallel(t)
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	addr := held.Addr().String()
	err = runServerCommand(t, "-l", addr)
	wantIn(t, err, "listen for agents on "+addr+": address already in use: another program (or another diglett-server) holds it; stop it or choose another --listen")

	err = runServerCommand(t, "-l", "127.0.0.1:0", "--domain", "example.test", "--http-addr", addr)
	wantIn(t, err, "listen for HTTP visitors on "+addr+": address already in use", "choose another --http-addr")
}

// Port 80, the default of --domain, without the privilege to bind it: the
// gateway says so, and how to use another port or grant the capability.
func TestMessageLowPortRefused(t *testing.T) {
	// In a network namespace of its own, where port 80 is privileged
	// whatever this machine's setting.
	parallel(t)
	err := privilege.WithoutBindService(func() error {
		return runServerCommand(t, "-l", "127.0.0.1:0", "--domain", "example.test")
	})
	wantIn(t, err, "listen for HTTP visitors on :80: permission denied: ports below 1024 need root or the capability to bind them",
		"(:80 is what --domain listens on by default)",
		"choose a port above 1023 with --http-addr (e.g. --http-addr :8080)",
		"or grant the capability: sudo setcap 'cap_net_bind_service=+ep' ")
}

// A duration without a unit says how to write one.
func TestMessageDurationWithoutUnit(t *testing.T) {
	parallel(t)
	err := runServerCommand(t, "-l", "127.0.0.1:0", "--lease", "60")
	wantIn(t, err, `--lease: "60" has no unit: want a duration with a unit, such as 60s or 5m`)
	err = runAgentCommand(t, atOnce, "-g", "127.0.0.1", "-n", "web", "--dial-timeout", "5", "9000")
	wantIn(t, err, `--dial-timeout: "5" has no unit: want a duration with a unit, such as 60s or 5m`)
}

// buildCommands builds the named commands (cmd/diglett...) into a
// directory of the test's and returns it.
func buildCommands(t *testing.T, pkgs ...string) string {
	t.Helper()
	bin := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", append([]string{"build", "-o", bin + string(filepath.Separator)}, pkgs...)...)
	build.Dir = repoRoot
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// make demo with its gateway port taken fails at once, with the gateway's
// own error, and says where the binaries are.
func TestDemoPortTaken(t *testing.T) {
	parallel(t)
	bin := buildCommands(t, "./cmd/diglett", "./cmd/diglett-server", "./examples/hello")
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	ctx, cancel := context.WithTimeout(context.Background(), eventually)
	defer cancel()
	demo := exec.CommandContext(ctx, "bash", "scripts/demo.sh")
	demo.Dir = repoRoot
	demo.Env = append(os.Environ(), "DEMO_ONCE=1", "BIN="+bin,
		"GATEWAY_ADDR="+held.Addr().String(), "BACKEND_ADDR="+freeAddr(t), "HTTP_ADDR="+freeAddr(t))
	start := time.Now()
	out, err := demo.CombinedOutput()
	if err == nil {
		t.Fatalf("the demo ran with its port taken:\n%s", out)
	}
	if took := time.Since(start); took > promptly {
		t.Errorf("the demo took %v to fail", took.Round(time.Millisecond))
	}
	for _, want := range []string{
		"binaries: " + bin + "/diglett-server (gateway), " + bin + "/diglett (agent)",
		"demo: the gateway (GATEWAY_ADDR=" + held.Addr().String(),
		"stopped at start",
		"listen for agents on " + held.Addr().String() + ": address already in use",
		"set GATEWAY_ADDR, HTTP_ADDR or BACKEND_ADDR",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}

// In a real shell, with the real binary on the PATH, the completion
// script completes flags and their values.
func TestCompletionInShell(t *testing.T) {
	parallel(t)
	fish := testutil.Program(t, "fish")
	bin := buildCommands(t, "./cmd/diglett")
	script, err := exec.Command(filepath.Join(bin, "diglett"), "completion", "fish").Output()
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "diglett.fish")
	if err := os.WriteFile(file, script, 0o600); err != nil {
		t.Fatal(err)
	}
	for line, want := range map[string]string{
		"diglett --transp":     "--transport",
		"diglett --transport ": "quic",
		"diglett -g gw --ret":  "--retry",
	} {
		ctx, cancel := context.WithTimeout(context.Background(), eventually)
		sh := exec.CommandContext(ctx, fish, "--no-config", "-c", "source "+file+"; complete -C '"+line+"'")
		sh.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
		out, err := sh.CombinedOutput()
		cancel()
		if err != nil || !strings.Contains("\n"+string(out), "\n"+want) {
			t.Errorf("fish completes %q with %q (%v), want %q", line, out, err, want)
		}
	}
}
