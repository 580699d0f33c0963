package e2e

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/auth/jwt"
	"github.com/diglett/diglett/config"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/cli"
	"github.com/diglett/diglett/internal/testutil"
)

// keyIdentity is a key made by "diglett keygen".
type keyIdentity struct {
	file, public, id string
}

var (
	keygenPublic = regexp.MustCompile(`(?m)^public key: (ed25519:\S+)$`)
	keygenID     = regexp.MustCompile(`(?m)^identity id: (\S+)$`)
)

// keygen runs "diglett keygen --out file" and reads what it prints.
func keygen(t *testing.T, file string) keyIdentity {
	t.Helper()
	var out, errOut bytes.Buffer
	if err := cli.Agent(t.Context(), []string{"keygen", "--out", file}, &out, &errOut); err != nil {
		t.Fatalf("diglett keygen: %v\n%s", err, &errOut)
	}
	pub, id := keygenPublic.FindStringSubmatch(out.String()), keygenID.FindStringSubmatch(out.String())
	if pub == nil || id == nil || !strings.Contains(out.String(), "diglett --identity-key "+file) {
		t.Fatalf("diglett keygen printed no public key, identity id or usage:\n%s", &out)
	}
	return keyIdentity{file: file, public: pub[1], id: id[1]}
}

// runAgent runs the agent command to its end, within eventually.
func runAgent(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), eventually)
	defer cancel()
	var out, errOut bytes.Buffer
	err = cli.Agent(ctx, args, &out, &errOut)
	if ctx.Err() != nil {
		t.Fatalf("agent %v did not end within %v: %v\n%s", args, eventually, err, &errOut)
	}
	return out.String(), errOut.String(), err
}

// readGreeting reads what the tunnel at public answers.
func readGreeting(t *testing.T, public string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", public, eventually)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(eventually))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read from %s: %v", public, err)
	}
	return string(got)
}

// TestIdentityKeys runs the flow of signed identity tokens with the real
// commands: keys made by diglett keygen, registered in the gateway's
// identities file, a jwt module in the gateway's config file, agents that
// sign a fresh token per login, a token from diglett token sign, and the
// refusals an agent sees.
func TestIdentityKeys(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	write := func(name, content string) string { return writeFile(t, dir, name, content) }
	alice := keygen(t, filepath.Join(dir, "keys", "alice.key"))
	bob := keygen(t, filepath.Join(dir, "keys", "bob.key"))
	if st, err := os.Stat(alice.file); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v; want mode 0600", st, err)
	}
	if _, _, err := runAgent(t, "keygen", "--out", alice.file); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("keygen over an existing key: %v, want refused", err)
	}

	write("identities.yaml", fmt.Sprintf("identities:\n  alice: %q\n  bob: %q\nnames:\n  web: alice\n  api: bob\n  minted: alice\n", alice.public, bob.public))
	lo, hi := randomPortWindow()
	gw := write("gateway.yaml", fmt.Sprintf(`version: 1
listen: 127.0.0.1:0
data_dir: state
ports: %d-%d
public_bind: 127.0.0.1
auth:
  - jwt: {identities: identities.yaml, audience: [127.0.0.1]}
register:
  - log: {}
`, lo, hi))
	srv := startServerCommand(t, "--config", gw)
	known := filepath.Join(dir, "known_gateways")
	common := []string{"-g", srv.Addr, "--fingerprint", srv.Fingerprint, "--known-gateways", known, "--transport", "tcp"}

	// alice publishes her own name, with identity_key in her config file.
	backend := startGreeter(t, "hello from web")
	ag := write("agent.yaml", fmt.Sprintf("version: 1\nidentity_key: keys/alice.key\ntunnels:\n  - {name: web, backend: %q}\n", backend))
	a := startAgentCommand(t, append(common, "--config", ag)...)
	public := a.tunnel(t, "web")
	waitFor(t, "server log", &srv.stderr, "identity="+alice.id)
	if got := readGreeting(t, public); got != "hello from web" {
		t.Errorf("tunnel web answered %q", got)
	}

	t.Run("name owned by another identity", func(t *testing.T) {
		_, stderr, err := runAgent(t, append(common, "--identity-key", alice.file, "-n", "api", backend)...)
		if err == nil || !strings.Contains(err.Error(), `name "api" is not allowed for this identity: name owned by another identity`) {
			t.Fatalf("agent asking for bob's name: %v, want refused as owned by another identity\n%s", err, stderr)
		}
	})
	t.Run("name nobody owns", func(t *testing.T) {
		_, _, err := runAgent(t, append(common, "--identity-key", bob.file, "-n", "free", backend)...)
		if err == nil || !strings.Contains(err.Error(), "name has no owner") {
			t.Fatalf("agent asking for a name with no owner: %v", err)
		}
	})
	t.Run("unregistered key", func(t *testing.T) {
		carol := keygen(t, filepath.Join(dir, "keys", "carol.key"))
		_, _, err := runAgent(t, append(common, "--identity-key", carol.file, "-n", "web", backend)...)
		if err == nil || !strings.Contains(err.Error(), "unknown identity key") {
			t.Fatalf("agent with an unregistered key: %v", err)
		}
	})
	t.Run("group-readable key", func(t *testing.T) {
		loose := filepath.Join(dir, "keys", "loose.key")
		keygen(t, loose)
		if err := os.Chmod(loose, 0o644); err != nil {
			t.Fatal(err)
		}
		_, stderr, err := runAgent(t, append(common, "--identity-key", loose, "-n", "web", backend)...)
		if err == nil || !strings.Contains(stderr, "warning: identity key "+loose+" can be read by other users") {
			t.Fatalf("agent with a group-readable key: %v, want a warning:\n%s", err, stderr)
		}
	})

	t.Run("token sign", func(t *testing.T) {
		out, stderr, err := runAgent(t, "token", "sign", "--key", alice.file, "--name", "minted", "--ttl", "1h", "--audience", "127.0.0.1")
		if err != nil {
			t.Fatalf("token sign: %v\n%s", err, stderr)
		}
		token := strings.TrimSpace(out)
		minted := startGreeter(t, "hello from minted")
		m := startAgentCommand(t, append(common, "-t", token, "-n", "minted", minted)...)
		if got := readGreeting(t, m.tunnel(t, "minted")); got != "hello from minted" {
			t.Errorf("tunnel minted answered %q", got)
		}
		// A minted token has no jti: a second agent logs in with it too.
		cfg := tokenAgent(t, srv, "minted", token)
		ln := mustListen(t, cfg)
		ln.Close()
		if err := m.stop(); err != nil {
			t.Errorf("agent with a minted token: %v", err)
		}
		_, _, err = runAgent(t, append(common, "-t", token, "-n", "web", backend)...)
		if err == nil || !strings.Contains(err.Error(), "name not in token") {
			t.Fatalf("minted token used for a name it does not list: %v", err)
		}
	})

	t.Run("replayed token", func(t *testing.T) {
		key, _, err := jwt.ReadKey(bob.file)
		if err != nil {
			t.Fatal(err)
		}
		var (
			mu     sync.Mutex
			signed []string
		)
		signer := &jwt.Signer{Key: key}
		cfg := tokenAgent(t, srv, "api", "")
		cfg.TokenFunc = func(ctx context.Context, gateway string, names []string) (string, error) {
			tok, err := signer.Token(ctx, gateway, names)
			mu.Lock()
			signed = append(signed, tok)
			mu.Unlock()
			return tok, err
		}
		ln := mustListen(t, cfg)
		defer ln.Close()
		mu.Lock()
		if len(signed) == 0 {
			mu.Unlock()
			t.Fatal("TokenFunc never called")
		}
		replay := signed[0]
		mu.Unlock()
		_, err = listen(t, tokenAgent(t, srv, "api", replay))
		if !errors.Is(err, diglett.ErrUnauthorized) || !strings.Contains(err.Error(), "token already used") {
			t.Fatalf("replayed token: %v, want refused as already used", err)
		}
	})

	if err := a.stop(); err != nil {
		t.Fatalf("agent command: %v", err)
	}
	srv.stop()
}

// TestJWTModuleSettings checks the jwt module's settings as the gateway
// reads them from its config file: the audience defaults to the gateway's
// domain, and each mistake is told with its line.
func TestJWTModuleSettings(t *testing.T) {
	dir := t.TempDir()
	key, err := jwt.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pub := key.Public().(ed25519.PublicKey)
	reg := filepath.Join(dir, "identities.yaml")
	os.WriteFile(reg, []byte(fmt.Sprintf("identities:\n  alice: %s\nnames:\n  web: alice\n", jwt.EncodePublicKey(pub))), 0o600)
	os.WriteFile(filepath.Join(dir, "bad.yaml"), []byte("identities:\n  alice: ed25519:AAAA\n"), 0o600)
	build := func(module string, env config.Env) (gateway.Authenticator, error) {
		file := filepath.Join(dir, "gateway.yaml")
		os.WriteFile(file, []byte("version: 1\nauth:\n  - jwt: "+module+"\n"), 0o600)
		f, err := config.LoadServer(file, config.Schema{})
		if err != nil {
			return nil, err
		}
		as, err := f.Authenticators(env)
		if err != nil {
			return nil, err
		}
		return as[0], nil
	}
	login := func(a gateway.Authenticator, aud, name string) error {
		tok, err := jwt.Sign(key, jwt.Claims{Names: []string{name}, Audience: []string{aud}})
		if err != nil {
			t.Fatal(err)
		}
		id, err := a.Authenticate(t.Context(), gateway.Credentials{Token: tok})
		if err != nil {
			return err
		}
		return a.Authorize(t.Context(), id, name)
	}

	a, err := build("{identities: identities.yaml}", config.Env{Domain: "gw.example"})
	if err != nil {
		t.Fatal(err)
	}
	if err := login(a, "gw.example", "web"); err != nil {
		t.Errorf("token for the gateway's domain: %v", err)
	}
	if err := login(a, "other.example", "web"); !errors.Is(err, gateway.ErrUnauthorized) {
		t.Errorf("token for another gateway: %v, want refused", err)
	}
	if err := login(a, "gw.example", "api"); !errors.Is(err, gateway.ErrForbidden) {
		t.Errorf("name with no owner, owners on by default: %v, want forbidden", err)
	}
	a, err = build("{identities: identities.yaml, audience: [a.example, b.example], owners: false, max_ttl: 1h, leeway: 5s, names_claim: names}", config.Env{})
	if err != nil {
		t.Fatal(err)
	}
	if err := login(a, "b.example", "api"); err != nil {
		t.Errorf("owners off, second audience: %v", err)
	}

	for _, tc := range []struct{ module, want string }{
		{"{identities: identities.yaml}", ":3: auth: jwt: no audience"},
		{"{audience: [gw]}", ":3: auth: jwt: want exactly one registry of identities"},
		{"{identities: missing.yaml, audience: [gw]}", ":3: auth: jwt: identities file: "},
		{"{identities: bad.yaml, audience: [gw]}", ":3: auth: jwt: identities file " + filepath.Join(dir, "bad.yaml") + ":2: identities: alice: public key"},
		{"{identities: identities.yaml, audience: [gw], owners: maybe}", ":3: auth: jwt.owners: want true or false"},
		{"{identities: identities.yaml, audience: [gw], max_ttl: -1h}", ":3: auth: jwt: jwt: negative max_ttl"},
		{"{identities: identities.yaml, audience: [gw], audiences: [x]}", `:3: auth: jwt: unknown key "audiences"`},
	} {
		_, err := build(tc.module, config.Env{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("jwt: %s: %v, want %q", tc.module, err, tc.want)
		}
	}
}

// TestIdentityKeysReload edits the identities file of a watched gateway
// while an agent's session lives on past its short-lived token: a change
// that leaves the agent its name keeps the session, one that gives the
// name to another identity closes it with the reason.
func TestIdentityKeysReload(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	alice := keygen(t, filepath.Join(dir, "alice.key"))
	bob := keygen(t, filepath.Join(dir, "bob.key"))
	carol := keygen(t, filepath.Join(dir, "carol.key"))
	registry := filepath.Join(dir, "identities.yaml")
	identities := func(webOwner string, extra ...keyIdentity) string {
		s := fmt.Sprintf("identities:\n  alice: %q\n  bob: %q\n", alice.public, bob.public)
		for _, k := range extra {
			s += fmt.Sprintf("  carol: %q\n", k.public)
		}
		return s + "names:\n  web: " + webOwner + "\n"
	}
	writeTokens(t, registry, identities("alice"))
	lo, hi := randomPortWindow()
	gw := filepath.Join(dir, "gateway.yaml")
	os.WriteFile(gw, []byte(fmt.Sprintf(`version: 1
listen: 127.0.0.1:0
data_dir: state
ports: %d-%d
public_bind: 127.0.0.1
auth:
  - jwt: {identities: identities.yaml, audience: [127.0.0.1], leeway: -1s}
register:
  - log: {}
`, lo, hi)), 0o600)
	srv := startServerCommand(t, "--config", gw, "--watch")
	waitFor(t, "server", &srv.stderr, `msg="watching for changes"`)

	key, _, err := jwt.ReadKey(alice.file)
	if err != nil {
		t.Fatal(err)
	}
	signer := &jwt.Signer{Key: key, TTL: time.Second}
	var (
		mu      sync.Mutex
		expires time.Time
	)
	cfg := tokenAgent(t, srv, "web", "")
	cfg.TokenFunc = func(ctx context.Context, gateway string, names []string) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		expires = time.Now().Add(2 * time.Second) // exp is in whole seconds
		return signer.Token(ctx, gateway, names)
	}
	ln := mustListen(t, cfg)
	forward(t, ln, startEcho(t))
	mustRoundTrip(t, ln.Addr().String(), "before")

	// Wait for the token to expire: the clock itself is the condition.
	mu.Lock()
	exp := expires
	mu.Unlock()
	if err := testutil.Poll(eventually, func() error {
		if time.Now().Before(exp) {
			return errors.New("token not expired yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	writeTokens(t, registry, identities("alice", carol))
	waitFor(t, "server", &srv.stderr, "sessions_kept=1 sessions_closed=0")
	mustRoundTrip(t, ln.Addr().String(), "after a reload, token expired")

	writeTokens(t, registry, identities("bob", carol))
	waitFor(t, "server", &srv.stderr, "sessions_kept=0 sessions_closed=1")
	waitFor(t, "server", &srv.stderr, `reason="name \"web\" is no longer allowed for this token"`)
	expectTurnedAway(t, ln.Addr().String())
	srv.stop()
}

// TestKeyCommands checks the command lines of diglett keygen and diglett
// token sign, and that they leave the agent's own command line alone.
func TestKeyCommands(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("HOME", dir)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	confDir, err := os.UserConfigDir()
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(confDir, "diglett", "identity.key")
	out, _, err := runAgent(t, "keygen")
	if err != nil || !strings.Contains(out, "identity key written to "+want) {
		t.Fatalf("keygen with no --out: %v\n%s", err, out)
	}
	if st, err := os.Stat(filepath.Dir(want)); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("config dir made: %v, %v; want mode 0700", st, err)
	}
	printed, _, err := runAgent(t, "keygen", "--print")
	if err != nil || keygenPublic.FindString(printed) != keygenPublic.FindString(out) || keygenID.FindString(printed) != keygenID.FindString(out) {
		t.Fatalf("keygen --print: %v\n%s\nwant the key made:\n%s", err, printed, out)
	}
	if _, _, err := runAgent(t, "keygen", "--help"); !cli.IsHelp(err) {
		t.Errorf("keygen --help: %v", err)
	}

	sign := []string{"token", "sign", "--key", want, "--audience", "gw.example"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"token"}, `expected "sign"`},
		{[]string{"token", "sign", "--key", want, "-n", "web"}, "missing flags: --audience=HOST"},
		{append(sign, "-n", "web", "--ttl", "0s"), "--ttl: want a positive duration"},
		{append(sign, "-n", "Web_1"), `--name "Web_1"`},
		{[]string{"token", "sign", "--key", filepath.Join(dir, "none"), "-n", "web", "--audience", "gw"}, "--key"},
		{[]string{"-g", "127.0.0.1:1", "-n", "web", "--identity-key", filepath.Join(dir, "none"), "9000"}, "--identity-key: identity key: "},
		{[]string{"-g", "127.0.0.1:1", "-n", "web", "--identity-key", want, "-t", "x", "9000"}, "--identity-key and a token (--token, --token-file): give one"},
	} {
		if _, _, err := runAgent(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("diglett %s: %v, want %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
	tok, _, err := runAgent(t, append(sign, "-n", "web", "-n", "demo-*")...)
	if err != nil {
		t.Fatal(err)
	}
	if parts := strings.Split(strings.TrimSpace(tok), "."); len(parts) != 3 {
		t.Fatalf("token sign printed %q, want a JWT", tok)
	}
}
