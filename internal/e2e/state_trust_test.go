package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/diglett/diglett/internal/testutil"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/internal/cli"
	"github.com/diglett/diglett/internal/cli/servercli"
	"github.com/diglett/diglett/internal/identity"
)

// runServer runs the server command with args and returns its error and
// output; the command must end by itself within atOnce.
func runServer(t *testing.T, args ...string) (error, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*eventually)
	defer cancel()
	var stdout, stderr testutil.Buffer
	errc := make(chan error, 1)
	start := time.Now()
	go func() { errc <- servercli.Server(ctx, args, &stdout, &stderr) }()
	select {
	case err := <-errc:
		return err, stderr.String()
	case <-time.After(atOnce):
		cancel()
		<-errc
		t.Fatalf("server command still running after %v (it should have refused to start); stderr:\n%s", time.Since(start), &stderr)
		return nil, ""
	}
}

// A data dir whose key file exists but cannot be read stops the gateway at
// once with an error naming the file (it used to recurse until the stack
// overflowed).
func TestServerRefusesUnreadableKey(t *testing.T) {
	checkLeaks(t)
	dir := t.TempDir()
	file := filepath.Join(dir, identity.KeyFile)
	if err := os.Symlink(filepath.Join(dir, "gone"), file); err != nil {
		t.Fatal(err)
	}
	err, _ := runServer(t, "-l", "127.0.0.1:0", "--no-quic", "--data-dir", dir)
	if err == nil {
		t.Fatal("the gateway started with a dangling key symlink")
	}
	t.Log(err)
	if !strings.Contains(err.Error(), file) {
		t.Errorf("error %q does not name %s", err, file)
	}
}

// A key other users may read is used, with a warning giving the fix.
func TestServerWarnsReadableKey(t *testing.T) {
	checkLeaks(t)
	dir := t.TempDir()
	key, err := identity.OpenKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(key.File, 0o644); err != nil {
		t.Fatal(err)
	}
	srv := startServerCommand(t, "-l", "127.0.0.1:0", "--no-quic", "--data-dir", dir)
	srv.stop()
	if want := "chmod 600 " + key.File; !strings.Contains(srv.stderr.String(), want) || !strings.Contains(srv.stderr.String(), "level=WARN") {
		t.Errorf("server log lacks a warning with %q:\n%s", want, &srv.stderr)
	}
}

// The idle timeout has a floor, and a keep-alive period it forces down is
// said in the log.
func TestIdleTimeoutFlags(t *testing.T) {
	checkLeaks(t)
	t.Run("server floor", func(t *testing.T) {
		err, _ := runServer(t, "-l", "127.0.0.1:0", "--no-quic", "--data-dir", t.TempDir(), "--max-idle-timeout", "500ms")
		if err == nil || !strings.Contains(err.Error(), "--max-idle-timeout") {
			t.Fatalf("server with --max-idle-timeout 500ms: %v, want a refusal naming the flag", err)
		}
		t.Log(err)
	})
	t.Run("agent floor", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), atOnce)
		defer cancel()
		var stdout, stderr testutil.Buffer
		err := cli.Agent(ctx, []string{"-g", unusedAddr(t), "-n", "x", "--known-gateways", filepath.Join(t.TempDir(), "kg"),
			"--max-idle-timeout", "500ms", "9"}, &stdout, &stderr)
		if err == nil || !strings.Contains(err.Error(), "--max-idle-timeout") || ctx.Err() != nil {
			t.Fatalf("agent with --max-idle-timeout 500ms: %v, want a refusal naming the flag", err)
		}
		t.Log(err)
	})
	t.Run("server lowers keepalive", func(t *testing.T) {
		srv := startServerCommand(t, "-l", "127.0.0.1:0", "--no-quic", "--data-dir", t.TempDir(), "--max-idle-timeout", "4s")
		srv.stop()
		const want = `msg="keep-alive period lowered to half the idle timeout" keep_alive_period=2s asked=5s max_idle_timeout=4s`
		if !strings.Contains(srv.stderr.String(), want) {
			t.Errorf("server log lacks %q:\n%s", want, &srv.stderr)
		}
	})
	t.Run("agent lowers keepalive", func(t *testing.T) {
		g := startGateway(t, gatewayOptions{})
		a := startAgentCommand(t, "-g", g.Addr, "-n", "lowered", "--fingerprint", g.Fingerprint, "--transport", "tcp",
			"--known-gateways", filepath.Join(t.TempDir(), "kg"), "--keep-alive-period", "3s", "--max-idle-timeout", "5s", startEcho(t))
		a.tunnel(t, "lowered")
		waitFor(t, "agent log", &a.stderr, `msg="keep-alive period lowered to half the idle timeout" keep_alive_period=2.5s asked=3s max_idle_timeout=5s`)
	})
}

// The gateway's refusal text is printed by the agent: control characters
// and terminal escapes are neutralised and the length bounded, so a gateway
// cannot forge log lines or drive the terminal.
func TestRefusalSanitized(t *testing.T) {
	t.Parallel()
	for _, msg := range []string{
		"\x1b[31mred\nforged log line",
		"a\rb\tc\x00d\u202ee\x7f\u0085f\u2028g",
		strings.Repeat("é", 5000),
	} {
		e := &diglett.RefusedError{Code: "forbidden", Message: msg}
		got := e.Error()
		if len(msg) < 100 {
			t.Logf("%q -> %q", msg, got)
		}
		for _, r := range got {
			if !unicode.IsPrint(r) && r != ' ' {
				t.Errorf("Error() = %q holds %U", got, r)
			}
		}
		if n := len([]rune(got)); n > 320 {
			t.Errorf("Error() is %d runes long", n)
		}
		if !errors.Is(e, diglett.ErrNameRefused) {
			t.Error("sentinel lost")
		}
	}
	if got := (&diglett.RefusedError{Code: "forbidden", Message: "name \"x\" is not allowed"}).Error(); got != "name \"x\" is not allowed" {
		t.Errorf("a plain message changed: %q", got)
	}
}

// A malformed known_gateways line stops the agent, over every transport,
// with an error naming the file and the line; the gateway is not pinned
// again beside it.
func TestKnownGatewaysMalformedRefused(t *testing.T) {
	checkLeaks(t)
	g := startGateway(t, gatewayOptions{})
	for _, via := range []string{diglett.TransportTCP, diglett.TransportQUIC} {
		t.Run(via, func(t *testing.T) {
			cfg := agentConfig(t, g, "malformed")
			cfg.Transport = via
			content := "# mine\n" + g.Addr + " SHA256:truncated\n"
			if err := os.WriteFile(cfg.KnownGateways, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			ln, err := listen(t, cfg)
			if err == nil {
				ln.Close()
				t.Fatal("the agent connected with a malformed known_gateways")
			}
			t.Logf("after %v: %v", time.Since(start), err)
			if !diglett.IsFatal(err) || time.Since(start) > atOnce {
				t.Errorf("error %v after %v: want a fatal refusal at once", err, time.Since(start))
			}
			for _, w := range []string{cfg.KnownGateways + " line 2", "Fix or delete line 2"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if data, _ := os.ReadFile(cfg.KnownGateways); string(data) != content {
				t.Errorf("known_gateways changed to %q", data)
			}
		})
	}
}
