//go:build unix

package servercli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/internal/testutil"
)

// runningServer is the server command running in this process.
type runningServer struct {
	addr, fingerprint string
	stdout, stderr    testutil.Buffer
	cancel            context.CancelFunc
	errc              chan error
}

var bannerRE = regexp.MustCompile(`diglett-server listening on (\S+)\ngateway key fingerprint: (SHA256:\S+)\n`)

// startServer runs the server command with args (and a data dir, agent
// address and public ports of the test) until the test ends.
func startServer(t *testing.T, args ...string) *runningServer {
	t.Helper()
	return startServerArgs(t, append([]string{"-l", "127.0.0.1:0", "--no-quic", "--data-dir", t.TempDir(), "--ports", "20000-32000"}, args...)...)
}

// startServerArgs runs the server command with args alone.
func startServerArgs(t *testing.T, args ...string) *runningServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &runningServer{cancel: cancel, errc: make(chan error, 1)}
	go func() { s.errc <- Server(ctx, args, &s.stdout, &s.stderr) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-s.errc:
			if err != nil {
				t.Errorf("server: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("server did not stop")
		}
		t.Logf("server stderr:\n%s", &s.stderr)
	})
	var m []string
	err := testutil.Poll(10*time.Second, func() error {
		select {
		case err := <-s.errc:
			s.errc <- err
			return fmt.Errorf("server ended: %v", err)
		default:
		}
		if m = bannerRE.FindStringSubmatch(s.stdout.String()); m == nil {
			return errors.New("no banner yet")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, &s.stderr)
	}
	s.addr, s.fingerprint = m[1], m[2]
	return s
}

// waitLog waits for the n-th line of the server's log that contains want.
func (s *runningServer) waitLog(t *testing.T, want string, n int) {
	t.Helper()
	err := testutil.Poll(10*time.Second, func() error {
		if got := strings.Count(s.stderr.String(), want); got < n {
			return fmt.Errorf("%d lines with %q, want %d", got, want, n)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v:\n%s", err, &s.stderr)
	}
}

// agent connects to s with token, publishing name.
func (s *runningServer) agent(t *testing.T, token, name string) (*diglett.Listener, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ln, err := diglett.Listen(ctx, diglett.Config{
		Gateway:       s.addr,
		Name:          name,
		Token:         token,
		Fingerprint:   s.fingerprint,
		KnownGateways: filepath.Join(t.TempDir(), "known_gateways"),
		Transport:     diglett.TransportTCP,
		Connections:   2,
		MaxBackoff:    100 * time.Millisecond,
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err == nil {
		t.Cleanup(func() { ln.Close() })
	}
	return ln, err
}

// hup sends SIGHUP to this process; the server command under test is the
// only one listening for it (no other test runs meanwhile).
func hup(t *testing.T) {
	t.Helper()
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
}

// SIGHUP reloads the tokens file: a new token logs in at once, a removed
// one ends its agent's sessions with the reason, a broken file keeps the
// tokens in force, and the gateway keeps running throughout.
func TestServerReloadsOnSIGHUP(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	tokens := filepath.Join(t.TempDir(), "tokens.yaml")
	writeFile(t, tokens, "- {token: secret-alice, identity: alice, names: [web]}\n")
	s := startServer(t, "--tokens", tokens)

	alice, err := s.agent(t, "secret-alice", "web")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.agent(t, "secret-bob", "api"); !errors.Is(err, diglett.ErrUnauthorized) {
		t.Fatalf("unknown token: %v, want refused", err)
	}

	writeFile(t, tokens, "- {token: secret-alice, identity: alice, names: [web]}\n- {token: secret-bob, identity: bob, names: [api]}\n")
	hup(t)
	s.waitLog(t, `msg="tokens reloaded" trigger=SIGHUP added=[bob] removed=[] changed=[]`, 1)
	bob, err := s.agent(t, "secret-bob", "api")
	if err != nil {
		t.Fatalf("new token after SIGHUP: %v", err)
	}

	// A broken file: refused, logged with file and line; both stay.
	writeFile(t, tokens, "- {token: secret-alice, identity: alice, names: [web]}\n- {token: secret-bob, names: api, quota: {names: lots}}\n")
	hup(t)
	s.waitLog(t, `msg="tokens not reloaded: keeping those in force" err="tokens file `+tokens+`:2`, 1)
	if _, err := s.agent(t, "secret-bob", "api"); err != nil {
		t.Fatalf("after a broken file, a token in force: %v", err)
	}

	// Alice's token removed: her listener stops with the reason.
	writeFile(t, tokens, "- {token: secret-bob, identity: bob, names: [api]}\n")
	hup(t)
	s.waitLog(t, `added=[] removed=[alice] changed=[]`, 1)
	select {
	case <-alice.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("agent of a revoked token still running")
	}
	err = alice.Err()
	if !errors.Is(err, diglett.ErrUnauthorized) || !strings.Contains(err.Error(), "token revoked by the gateway's operator") {
		t.Fatalf("revoked agent stopped with %v", err)
	}
	t.Logf("revoked agent: %v", err)
	select {
	case <-bob.Done():
		t.Fatalf("bob's agent stopped: %v", bob.Err())
	default:
	}
	if _, err := s.agent(t, "secret-alice", "web"); !errors.Is(err, diglett.ErrUnauthorized) {
		t.Fatalf("revoked token: %v, want refused", err)
	}
	// A reload with nothing to reload changes nothing, and the gateway
	// still runs.
	hup(t)
	s.waitLog(t, `msg="tokens reloaded" trigger=SIGHUP added=[] removed=[] changed=[]`, 1)
	if _, err := s.agent(t, "secret-bob", "api"); err != nil {
		t.Fatal(err)
	}
}

// Without a tokens file, SIGHUP no longer stops the gateway.
func TestServerSIGHUPWithoutTokens(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	s := startServer(t)
	hup(t)
	s.waitLog(t, "SIGHUP: nothing to reload", 1)
	if _, err := s.agent(t, "", "web"); err != nil {
		t.Fatal(err)
	}
}

// With --watch a change to the tokens file is reloaded without a signal,
// also when it arrives through a ConfigMap-style "..data" swap.
func TestServerWatchesTokens(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	dir := t.TempDir()
	writeVersion := func(ver, content string) {
		t.Helper()
		if err := mkdir(filepath.Join(dir, ver)); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, ver, "tokens.yaml"), content)
		if err := symlinkOver(ver, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	writeVersion("..v1", "- {token: secret-alice, identity: alice, names: [web]}\n")
	tokens := filepath.Join(dir, "tokens.yaml")
	if err := symlinkOver(filepath.Join("..data", "tokens.yaml"), tokens); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, "--tokens", tokens, "--watch")
	s.waitLog(t, `msg="watching for changes"`, 1)
	if _, err := s.agent(t, "secret-bob", "api"); !errors.Is(err, diglett.ErrUnauthorized) {
		t.Fatalf("unknown token: %v, want refused", err)
	}
	writeVersion("..v2", "- {token: secret-alice, identity: alice, names: [web]}\n- {token: secret-bob, identity: bob, names: [api]}\n")
	s.waitLog(t, `msg="tokens reloaded" trigger="file changed"`, 1)
	if _, err := s.agent(t, "secret-bob", "api"); err != nil {
		t.Fatalf("new token after the swap: %v", err)
	}
}

func mkdir(path string) error {
	return os.Mkdir(path, 0o755)
}

// symlinkOver points link at target atomically: a new link renamed over
// the old one, as a ConfigMap volume swaps its "..data".
func symlinkOver(target, link string) error {
	tmp := link + ".tmp"
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, link)
}
