package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/testutil"
)

// The live reload of the gateway's tokens file (diglett-server --tokens
// FILE --watch), over real sockets: the server command in-process, agents
// through the library and the agent binary. SIGHUP is tested in
// internal/cli, where the test can own the process's signals.

// reloadServer runs the server command with tokens as its watched tokens
// file.
func reloadServer(t *testing.T, tokens string) *serverCommand {
	t.Helper()
	lo, hi := randomPortWindow()
	s := startServerCommand(t, "-l", "127.0.0.1:0", "--no-quic", "--data-dir", t.TempDir(),
		"--ports", fmt.Sprintf("%d-%d", lo, hi), "--public-bind", "127.0.0.1",
		"--tokens", tokens, "--watch")
	waitFor(t, "server", &s.stderr, `msg="watching for changes"`)
	return s
}

// tokenAgent is an agent config for the server command s.
func tokenAgent(t *testing.T, s *serverCommand, name, token string) diglett.Config {
	cfg := agentConfig(t, &testGateway{Addr: s.Addr}, name)
	cfg.Token = token
	cfg.Fingerprint = s.Fingerprint
	return cfg
}

// loggedIn matches the gateway's log line of a login by identity.
func loggedIn(identity string) *regexp.Regexp {
	return regexp.MustCompile(`msg="agent logged in" agent=\S+ transport=\S+ identity=` + regexp.QuoteMeta(identity) + ` session=\d+\n`)
}

// tokenLine is one entry of a tokens file.
func tokenLine(token, identity string, names ...string) string {
	return fmt.Sprintf("- {token: %s, identity: %s, names: [%s]}\n", token, identity, strings.Join(names, ", "))
}

// writeTokens replaces path the way editors save: a new file renamed over
// the old one.
func writeTokens(t *testing.T, path string, lines ...string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.Join(lines, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// A download streaming through a tunnel goes on, whole and checksummed,
// across ten reloads that add and remove other identities' tokens; the
// agent's session is never dropped.
func TestReloadKeepsDownloadGoing(t *testing.T) {
	parallel(t)
	const size = 16 << 20
	payload := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{1})
	rng.Read(payload)
	want := sha256.Sum256(payload)
	backend := startBackend(t, func(c *net.TCPConn) {
		c.Write(payload)
		c.CloseWrite()
	})

	tokens := filepath.Join(t.TempDir(), "tokens.yaml")
	alice := tokenLine("secret-alice", "alice", "dl")
	writeTokens(t, tokens, alice)
	s := reloadServer(t, tokens)
	ln := mustListen(t, tokenAgent(t, s, "dl", "secret-alice"))
	forward(t, ln, backend)

	c, err := net.DialTimeout("tcp", ln.Addr().String(), promptly)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	h := sha256.New()
	chunk := size / 11
	for i := range 10 {
		if _, err := io.CopyN(h, c, int64(chunk)); err != nil {
			t.Fatalf("download before reload %d: %v", i+1, err)
		}
		// Reload i+1, with a guest added each time and the previous
		// one removed.
		writeTokens(t, tokens, alice, tokenLine(fmt.Sprintf("secret-guest-%d", i), fmt.Sprintf("guest-%d", i), "guest"))
		waitForN(t, "server", &s.stderr, `msg="tokens reloaded" trigger="file changed"`, i+1)
	}
	n, err := io.Copy(h, c)
	if err != nil {
		t.Fatalf("download after the reloads: %v", err)
	}
	if got := int64(10*chunk) + n; got != size {
		t.Fatalf("downloaded %d bytes, want %d", got, size)
	}
	if !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatal("download corrupted across reloads")
	}
	logs := s.stderr.String()
	if !strings.Contains(logs, "added=[guest-9] removed=[guest-8] changed=[] sessions_kept=1 sessions_closed=0") {
		t.Errorf("the last reload did not log what changed:\n%s", logs)
	}
	if strings.Contains(logs, "agent disconnected") || strings.Contains(logs, "agent session closed") {
		t.Errorf("the agent's session was dropped:\n%s", logs)
	}
	if strings.Contains(logs, "secret-") {
		t.Errorf("a token was logged:\n%s", logs)
	}
}

// A token added to the file lets a new agent in at once; a token removed
// ends its agent (the real binary) with the reason and a non-zero exit,
// while the other agents go on.
func TestReloadAddsAndRevokesTokens(t *testing.T) {
	parallel(t)
	bin := buildAgent(t)
	echo := startEcho(t)
	tokens := filepath.Join(t.TempDir(), "tokens.yaml")
	bob := tokenLine("secret-bob", "bob", "bob")
	writeTokens(t, tokens, tokenLine("secret-alice", "alice", "alice"), bob)
	s := reloadServer(t, tokens)

	p := startAgentProcess(t, bin, nil, "-g", s.Addr, "-n", "alice", "-t", "secret-alice",
		"--fingerprint", s.Fingerprint, "--known-gateways", filepath.Join(t.TempDir(), "kg"), echo)
	aliceAddr := p.tunnel(t, "alice")
	mustRoundTrip(t, aliceAddr, "before")
	bobLn := mustListen(t, tokenAgent(t, s, "bob", "secret-bob"))
	forward(t, bobLn, echo)

	if _, err := listen(t, tokenAgent(t, s, "carol", "secret-carol")); err == nil {
		t.Fatal("unknown token let in")
	}
	writeTokens(t, tokens, tokenLine("secret-alice", "alice", "alice"), bob, tokenLine("secret-carol", "carol", "carol"))
	waitFor(t, "server", &s.stderr, "added=[carol] removed=[] changed=[]")
	carolLn := mustListen(t, tokenAgent(t, s, "carol", "secret-carol"))
	forward(t, carolLn, echo)
	mustRoundTrip(t, carolLn.Addr().String(), "carol")

	// Alice's token revoked: her agent exits with the reason.
	writeTokens(t, tokens, bob, tokenLine("secret-carol", "carol", "carol"))
	if code := p.waitExit(t, eventually); code == 0 {
		t.Fatal("revoked agent exited with status 0")
	}
	if want := "token revoked by the gateway's operator"; !strings.Contains(p.stderr.String(), want) {
		t.Fatalf("revoked agent did not say %q:\n%s", want, &p.stderr)
	}
	waitFor(t, "server", &s.stderr, "added=[] removed=[alice] changed=[] sessions_kept=2 sessions_closed=2")
	expectTurnedAway(t, aliceAddr)
	// The others go on, over the sessions they had.
	mustRoundTrip(t, bobLn.Addr().String(), "bob")
	mustRoundTrip(t, carolLn.Addr().String(), "carol")
	if n := len(loggedIn("bob").FindAllString(s.stderr.String(), -1)); n != 1 {
		t.Errorf("bob logged in %d times, want once:\n%s", n, &s.stderr)
	}
}

// The tokens file mounted from a Kubernetes ConfigMap: each version in a
// directory of its own, "..data" swapped atomically from one to the next,
// the file a symlink through "..data". A broken version keeps the tokens
// in force; the next good one is picked up.
func TestReloadConfigMapSwap(t *testing.T) {
	parallel(t)
	echo := startEcho(t)
	dir := t.TempDir()
	version := 0
	swap := func(lines ...string) {
		t.Helper()
		version++
		ver := fmt.Sprintf("..2026_12_01_00_00_%02d.%d", version, version)
		if err := os.Mkdir(filepath.Join(dir, ver), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, ver, "tokens.yaml"), []byte(strings.Join(lines, "")), 0o600); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(ver, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	alice := tokenLine("secret-alice", "alice", "alice")
	swap(alice)
	tokens := filepath.Join(dir, "tokens.yaml")
	if err := os.Symlink(filepath.Join("..data", "tokens.yaml"), tokens); err != nil {
		t.Fatal(err)
	}
	s := reloadServer(t, tokens)
	aliceLn := mustListen(t, tokenAgent(t, s, "alice", "secret-alice"))
	forward(t, aliceLn, echo)

	// A broken version: refused, with file and line.
	swap(alice, "- {token: secret-bob, identity: bob, names: [bob], colour: blue}\n")
	waitFor(t, "server", &s.stderr, `msg="tokens not reloaded: keeping those in force" err="tokens file `+tokens+`:2`)
	mustRoundTrip(t, aliceLn.Addr().String(), "still served")
	if _, err := listen(t, tokenAgent(t, s, "bob", "secret-bob")); err == nil {
		t.Fatal("token of a refused file let in")
	}
	mustListen(t, tokenAgent(t, s, "alice", "secret-alice"))

	// The next good version.
	swap(alice, tokenLine("secret-bob", "bob", "bob"))
	waitFor(t, "server", &s.stderr, "added=[bob] removed=[] changed=[]")
	bobLn := mustListen(t, tokenAgent(t, s, "bob", "secret-bob"))
	forward(t, bobLn, echo)
	mustRoundTrip(t, bobLn.Addr().String(), "bob")
	mustRoundTrip(t, aliceLn.Addr().String(), "alice")
}

// A revocation by one gateway stops the whole listener: its sessions to
// the other gateways end too, and Accept returns the reason, naming the
// gateway.
func TestRevocationStopsEveryLink(t *testing.T) {
	checkLeaks(t)
	allow := gateway.AuthFuncs{
		AuthenticateFunc: func(context.Context, gateway.Credentials) (gateway.Identity, error) {
			return gateway.Identity{Name: "alice"}, nil
		},
		AuthorizeFunc: func(context.Context, gateway.Identity, string) error { return nil },
	}
	g1 := startGateway(t, gatewayOptions{Auth: allow})
	g2 := startGateway(t, gatewayOptions{Auth: allow, Key: g1.Key})
	cfg := agentConfig(t, g1, "both")
	cfg.Gateways = []string{g2.Addr}
	cfg.Fingerprint = g1.Fingerprint
	cfg.Connections = 2
	ln := mustListen(t, cfg)
	forward(t, ln, startEcho(t))
	waitForN(t, "second gateway", g2.Logs, "agent logged in", 2)
	// Both sessions to the first gateway serve the name before it is
	// taken away: a session not registered yet has nothing to lose.
	if err := testutil.Poll(eventually, func() error {
		serving := 0
		for _, a := range g1.Agents() {
			if slices.Contains(a.Names, "both") {
				serving++
			}
		}
		if serving != 2 {
			return fmt.Errorf("%d sessions serve the name", serving)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	noName := allow
	noName.AuthorizeFunc = func(_ context.Context, _ gateway.Identity, name string) error {
		return fmt.Errorf("%w: %q", gateway.ErrForbidden, name)
	}
	// The agent gives up as soon as one session is refused, and closes
	// the other: the re-check closes that one too, or finds it gone.
	// None is kept.
	res, err := g1.SetAuthenticator(context.Background(), noName)
	if err != nil || res.Closed < 1 || res.Kept != 0 || res.Failed != 0 {
		t.Fatalf("re-check %+v %v, want both sessions closed or gone, none kept", res, err)
	}
	select {
	case <-ln.Done():
	case <-time.After(eventually):
		t.Fatal("listener still running after a revocation")
	}
	err = ln.Err()
	want := "gateway " + g1.Addr + ` ended the session: name "both" is no longer allowed for this token`
	if !errors.Is(err, diglett.ErrNameRefused) || err.Error() != want {
		t.Fatalf("listener stopped with %q, want %q", err, want)
	}
	// The other gateway's sessions ended too, and were not replaced.
	waitForN(t, "second gateway", g2.Logs, "agent disconnected", 2)
	if n := strings.Count(g2.Logs.String(), "agent logged in"); n != 2 {
		t.Errorf("second gateway saw %d logins, want 2", n)
	}
}
