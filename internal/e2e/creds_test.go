package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/auth/basic"
	"github.com/diglett/diglett/internal/cli"
	"github.com/diglett/diglett/internal/testutil"
)

// credsGateway runs the gateway command with auth, the YAML of its auth
// list, in a file written to dir beside the files it names.
func credsGateway(t *testing.T, dir, auth string) *serverCommand {
	t.Helper()
	lo, hi := randomPortWindow()
	gw := filepath.Join(dir, "gateway.yaml")
	if err := os.WriteFile(gw, []byte(fmt.Sprintf(`version: 1
listen: 127.0.0.1:0
data_dir: state
ports: %d-%d
public_bind: 127.0.0.1
lease: 2s
auth:
%s`, lo, hi, auth)), 0o600); err != nil {
		t.Fatal(err)
	}
	return startServerCommand(t, "--config", gw)
}

// credsAgentArgs are the arguments of an agent of srv publishing name,
// followed by extra and the backend.
func credsAgentArgs(t *testing.T, srv *serverCommand, name, backend string, extra ...string) []string {
	args := []string{"-g", srv.Addr, "-n", name, "--fingerprint", srv.Fingerprint, "--transport", "tcp",
		"--known-gateways", filepath.Join(t.TempDir(), "known_gateways")}
	return append(append(args, extra...), backend)
}

// expectGreeting dials a tunnel's public address and wants greeting.
func expectGreeting(t *testing.T, public, greeting string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", public, eventually)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(eventually))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != greeting {
		t.Fatalf("tunnel reached %q (%v), want %q", got, err, greeting)
	}
}

// refusedAgent runs the agent command with args, which the gateway must
// refuse at once, and returns the command's error.
func refusedAgent(t *testing.T, args []string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), eventually)
	defer cancel()
	var stdout, stderr testutil.Buffer
	start := time.Now()
	err := cli.Agent(ctx, args, &stdout, &stderr)
	if d := time.Since(start); d > atOnce {
		t.Errorf("the agent command took %v to give up (%v): a refusal is not retried", d, err)
	}
	if err == nil {
		t.Errorf("the agent command %v ended without an error", args)
	}
	if stdout.String() != "" {
		t.Errorf("the refused agent printed tunnels:\n%s", &stdout)
	}
	return err
}

// TestBasicLoginCommand: an agent logs in with --user and --password-file
// through the basic module of a gateway's config file; one with a wrong
// password, and one with an unknown user, are refused at once with the
// same clear message, and no password reaches the gateway's log.
func TestBasicLoginCommand(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	hash, err := basic.HashBcrypt("correct horse", bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("users.yaml", fmt.Sprintf("- user: alice\n  password_hash: %q\n  names: [\"alice-*\"]\n", hash))
	good := write("good.pw", "correct horse\n")
	bad := write("bad.pw", "battery staple\n")
	srv := credsGateway(t, dir, "  - basic: {file: users.yaml}\n")

	a := startAgentCommand(t, credsAgentArgs(t, srv, "alice-web", startGreeter(t, "alice"), "--user", "alice", "--password-file", good)...)
	expectGreeting(t, a.tunnel(t, "alice-web"), "alice")
	waitFor(t, "server log", &srv.stderr, "identity=alice")

	for _, tc := range []struct{ name, user, pwFile string }{
		{"wrong password", "alice", bad},
		{"unknown user", "mallory", good},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := refusedAgent(t, credsAgentArgs(t, srv, "alice-x", "127.0.0.1:9", "--user", tc.user, "--password-file", tc.pwFile))
			if want := "login refused by the gateway: user or password refused"; !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q, want %q", err, want)
			}
		})
	}
	if err := a.stop(); err != nil {
		t.Fatalf("agent command: %v", err)
	}
	srv.stop()
	for _, secret := range []string{"correct horse", "battery staple"} {
		if strings.Contains(srv.stderr.String()+srv.stdout.String(), secret) {
			t.Errorf("the gateway logged a password:\n%s", &srv.stderr)
		}
	}
}

// TestExternalLoginCommand: the gateway asks the test's webhook about each
// agent; one is let in with the identity and names of the webhook's
// answer, one is refused with the webhook's reason shown to it, one
// asking for a name the answer does not give is refused that name, and
// one that logs in while the webhook fails is told the gateway failed
// (not refused) and gets in once the webhook answers.
func TestExternalLoginCommand(t *testing.T) {
	parallel(t)
	var calls atomic.Int64
	var down atomic.Bool // the webhook fails for flaky-token
	down.Store(true)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		switch r.Header.Get("Authorization") {
		case "Token flaky-token":
			if down.Load() {
				http.Error(w, "database down", http.StatusServiceUnavailable)
				return
			}
			io.WriteString(w, `{"identity": "ext-flaky"}`)
		case "Token good-token":
			io.WriteString(w, `{"identity": "ext-alice", "names": ["web", "web-*"]}`)
		case "Token revoked-token":
			http.Error(w, "token revoked by ops on Monday", http.StatusForbidden)
		default:
			http.Error(w, "unknown token", http.StatusUnauthorized)
		}
	}))
	t.Cleanup(hook.Close)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "revoked.token")
	if err := os.WriteFile(tokenFile, []byte("revoked-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := credsGateway(t, dir, fmt.Sprintf("  - external: {url: %q, scheme: Token, timeout: 2s, cache: 30s}\n", hook.URL+"/check"))

	a := startAgentCommand(t, credsAgentArgs(t, srv, "web", startGreeter(t, "hello"), "-t", "good-token")...)
	expectGreeting(t, a.tunnel(t, "web"), "hello")
	waitFor(t, "server log", &srv.stderr, "identity=ext-alice")

	t.Run("refused with the webhook's reason", func(t *testing.T) {
		err := refusedAgent(t, credsAgentArgs(t, srv, "web-2", "127.0.0.1:9", "--token-file", tokenFile))
		if want := "login refused by the gateway: token revoked by ops on Monday"; !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q, want %q", err, want)
		}
	})
	t.Run("name not in the answer", func(t *testing.T) {
		err := refusedAgent(t, credsAgentArgs(t, srv, "other", "127.0.0.1:9", "-t", "good-token"))
		if want := `name "other" is not allowed`; !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q, want %q", err, want)
		}
	})
	t.Run("webhook failing, then back", func(t *testing.T) {
		// A failing webhook turns the login away as a failure of the
		// gateway, not a refusal: not fatal (a running agent retries; at
		// start the command reports it), and the same agent gets in once
		// the webhook answers.
		err := refusedAgent(t, credsAgentArgs(t, srv, "flaky", "127.0.0.1:9", "-t", "flaky-token"))
		if !strings.Contains(err.Error(), "authentication failed") || errors.Is(err, diglett.ErrUnauthorized) || diglett.IsFatal(err) {
			t.Fatalf("err = %v, want a failure of the gateway that is not fatal", err)
		}
		waitFor(t, "server log", &srv.stderr, `reason="status 503"`)
		down.Store(false)
		f := startAgentCommand(t, credsAgentArgs(t, srv, "flaky", startGreeter(t, "flaky"), "-t", "flaky-token")...)
		expectGreeting(t, f.tunnel(t, "flaky"), "flaky")
		if err := f.stop(); err != nil {
			t.Fatalf("agent command: %v", err)
		}
	})
	if err := a.stop(); err != nil {
		t.Fatalf("agent command: %v", err)
	}
	srv.stop()
	if n := calls.Load(); n < 3 {
		t.Errorf("the webhook was asked %d times, want one per login", n)
	}
	for _, secret := range []string{"good-token", "revoked-token"} {
		if strings.Contains(srv.stderr.String()+srv.stdout.String(), secret) {
			t.Errorf("the gateway logged a token:\n%s", &srv.stderr)
		}
	}
}
