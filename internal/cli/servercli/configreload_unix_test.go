//go:build unix

package servercli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/cli"
	"github.com/diglett/diglett/internal/testutil"
)

// runningAgent is the agent command running in this process.
type runningAgent struct {
	stdout, stderr testutil.Buffer
	errc           chan error
}

// startAgent runs the agent command against s with token, publishing name,
// until the test ends, and waits for it to be serving.
func (s *runningServer) startAgent(t *testing.T, token, name string) *runningAgent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a := &runningAgent{errc: make(chan error, 1)}
	args := []string{"-g", s.addr, "-t", token, "-n", name, "--fingerprint", s.fingerprint,
		"--known-gateways", filepath.Join(t.TempDir(), "known_gateways"), "--transport", "tcp", "127.0.0.1:9"}
	go func() { a.errc <- cli.Agent(ctx, args, &a.stdout, &a.stderr) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-a.errc:
		case <-time.After(30 * time.Second):
			t.Error("agent did not stop")
		}
	})
	err := testutil.Poll(10*time.Second, func() error {
		select {
		case err := <-a.errc:
			a.errc <- err
			return fmt.Errorf("agent ended: %v", err)
		default:
		}
		if !strings.Contains(a.stdout.String(), name+": ") {
			return errors.New("not serving yet")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, &a.stderr)
	}
	return a
}

// wait waits for the agent command to end and returns its error.
func (a *runningAgent) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-a.errc:
		a.errc <- err
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("agent still running:\n%s", &a.stderr)
		return nil
	}
}

func (a *runningAgent) running() bool {
	select {
	case err := <-a.errc:
		a.errc <- err
		return false
	default:
		return true
	}
}

// mustRefuse checks that token cannot log in to s.
func (s *runningServer) mustRefuse(t *testing.T, token, name string) {
	t.Helper()
	if _, err := s.agent(t, token, name); !errors.Is(err, diglett.ErrUnauthorized) {
		t.Fatalf("token %s: %v, want refused", token, err)
	}
}

// With --config and --watch, the configuration file and the tokens files
// it names are reloaded live: a token added lets its agent in, a broken
// file keeps the one in force, a changed listen address only says it
// needs a restart, and the auth list pointed at another tokens file ends
// the sessions of the tokens no longer in it, and is watched from then on.
func TestServerReloadsConfig(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	dir := t.TempDir()
	cfg := filepath.Join(dir, "gateway.yaml")
	tokens1 := filepath.Join(dir, "tokens1.yaml")
	tokens2 := filepath.Join(dir, "tokens2.yaml")
	writeFile(t, tokens1, "- {token: secret-alice, identity: alice, names: [web]}\n")
	writeFile(t, tokens2, "- {token: secret-bob, identity: bob, names: [api]}\n")
	base := fmt.Sprintf("version: 1\nquic: false\ndata_dir: %s\nports: 20000-32000\n", t.TempDir())
	writeFile(t, cfg, base+"listen: 127.0.0.1:0\nauth:\n  - tokens: {file: tokens1.yaml}\n")
	s := startServerArgs(t, "--config", cfg, "--watch")
	s.waitLog(t, `msg="watching for changes" files="[`+cfg+" "+tokens1+`]"`, 1)

	alice := s.startAgent(t, "secret-alice", "web")
	s.mustRefuse(t, "secret-carol", "shop")

	// A token added to the tokens file the configuration names.
	writeFile(t, tokens1, "- {token: secret-alice, identity: alice, names: [web]}\n- {token: secret-carol, identity: carol, names: [shop]}\n")
	s.waitLog(t, `msg="config reloaded" trigger="file changed" files=[`+tokens1+`] added=[carol] removed=[] changed=[] auth_modules_added=[] auth_modules_removed=[]`, 1)
	if _, err := s.agent(t, "secret-carol", "shop"); err != nil {
		t.Fatalf("token added: %v", err)
	}

	// A broken file: refused with its file, line and key; all stays.
	writeFile(t, cfg, base+"listen: 127.0.0.1:0\nauth:\n  - tokens: {file: tokens2.yaml}\nmax_visitor: 5\n")
	s.waitLog(t, `level=ERROR msg="config not reloaded: keeping the one in force" err="`+cfg+`:8: unknown key \"max_visitor\" (did you mean \"max_visitors\"?)"`, 1)
	if !alice.running() {
		t.Fatalf("agent stopped by a broken file: %v", alice.wait(t))
	}
	if _, err := s.agent(t, "secret-carol", "shop"); err != nil {
		t.Fatalf("after a broken file: %v", err)
	}
	s.mustRefuse(t, "secret-bob", "api")

	// A tokens file that does not exist: refused too.
	writeFile(t, cfg, base+"listen: 127.0.0.1:0\nauth:\n  - tokens: {file: missing.yaml}\n")
	s.waitLog(t, `msg="config not reloaded: keeping the one in force" err="`+cfg+`:7: auth: tokens:`, 1)
	if !alice.running() {
		t.Fatalf("agent stopped by a missing tokens file: %v", alice.wait(t))
	}

	// The same through tokens: instead of the auth list.
	writeFile(t, cfg, base+"listen: 127.0.0.1:0\ntokens: missing.yaml\n")
	s.waitLog(t, `msg="config not reloaded: keeping the one in force" err="`+cfg+`:6: tokens: stat `+filepath.Join(dir, "missing.yaml")+`: no such file or directory"`, 1)

	// A new listen address needs a restart: said, and nothing else done.
	writeFile(t, cfg, base+"listen: 127.0.0.1:1\nauth:\n  - tokens: {file: tokens1.yaml}\n")
	s.waitLog(t, `level=WARN msg="config change needs a restart" keys=[listen] trigger="file changed"`, 1)
	s.waitLog(t, `msg="config reloaded" trigger="file changed" files=[`+cfg+`] added=[] removed=[] changed=[]`, 1)
	if _, err := s.agent(t, "secret-carol", "shop"); err != nil {
		t.Fatalf("after a change of listen: %v", err)
	}
	if !alice.running() {
		t.Fatalf("agent stopped by a change of listen: %v", alice.wait(t))
	}

	// The auth list points at another tokens file, without alice's token:
	// her agent exits with the reason.
	writeFile(t, cfg, base+"listen: 127.0.0.1:0\nauth:\n  - tokens: {file: tokens2.yaml}\n")
	s.waitLog(t, `added=[bob] removed="[alice carol]" changed=[] auth_modules_added=[tokens:`+tokens2+`] auth_modules_removed=[tokens:`+tokens1+`]`, 1)
	err := alice.wait(t)
	if err == nil || !strings.Contains(err.Error(), "token revoked by the gateway's operator") {
		t.Fatalf("revoked agent ended with %v, want the reason", err)
	}
	t.Logf("revoked agent: %v", err)
	s.mustRefuse(t, "secret-alice", "web")
	if _, err := s.agent(t, "secret-bob", "api"); err != nil {
		t.Fatalf("token of the new file: %v", err)
	}

	// The watch follows the file now named.
	s.waitLog(t, `msg="watching for changes" files="[`+cfg+" "+tokens2+`]"`, 1)
	writeFile(t, tokens2, "- {token: secret-bob, identity: bob, names: [api]}\n- {token: secret-dave, identity: dave, names: [db]}\n")
	s.waitLog(t, `added=[dave]`, 1)
	if _, err := s.agent(t, "secret-dave", "db"); err != nil {
		t.Fatalf("token added to the new file: %v", err)
	}
	if strings.Contains(s.stderr.String(), "secret-") {
		t.Fatalf("a token in the log:\n%s", &s.stderr)
	}
}

// A configuration file in a ConfigMap-style volume, swapped through its
// "..data" link with the tokens file beside it, is reloaded.
func TestServerWatchesConfigMap(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	dir := t.TempDir()
	dataDir := t.TempDir()
	writeVersion := func(ver, tokens string) {
		t.Helper()
		if err := mkdir(filepath.Join(dir, ver)); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, ver, "gateway.yaml"), "version: 1\ndata_dir: "+dataDir+"\nauth:\n  - tokens: {file: tokens.yaml}\n")
		writeFile(t, filepath.Join(dir, ver, "tokens.yaml"), tokens)
		if err := symlinkOver(ver, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	writeVersion("..v1", "- {token: secret-alice, identity: alice, names: [web]}\n")
	for _, f := range []string{"gateway.yaml", "tokens.yaml"} {
		if err := symlinkOver(filepath.Join("..data", f), filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	s := startServerArgs(t, "-l", "127.0.0.1:0", "--no-quic", "--config", filepath.Join(dir, "gateway.yaml"), "--watch")
	s.waitLog(t, `msg="watching for changes"`, 1)
	s.mustRefuse(t, "secret-bob", "api")
	writeVersion("..v2", "- {token: secret-alice, identity: alice, names: [web]}\n- {token: secret-bob, identity: bob, names: [api]}\n")
	s.waitLog(t, `msg="config reloaded" trigger="file changed"`, 1)
	if _, err := s.agent(t, "secret-bob", "api"); err != nil {
		t.Fatalf("new token after the swap: %v", err)
	}
}

// Flags keep winning over the file on a reload: --tokens over the file's
// tokens:, --max-visitors over its max_visitors (no restart asked for).
func TestServerConfigReloadKeepsFlags(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	dir := t.TempDir()
	cfg := filepath.Join(dir, "gateway.yaml")
	flagTokens := filepath.Join(dir, "flag.yaml")
	fileTokens := filepath.Join(dir, "file.yaml")
	writeFile(t, flagTokens, "- {token: secret-alice, identity: alice, names: [web]}\n")
	writeFile(t, fileTokens, "- {token: secret-bob, identity: bob, names: [api]}\n")
	writeFile(t, cfg, "version: 1\nmax_visitors: 100\ntokens: file.yaml\n")
	s := startServer(t, "--config", cfg, "--tokens", flagTokens, "--max-visitors", "50", "--watch")
	s.waitLog(t, `msg="watching for changes" files="[`+cfg+" "+flagTokens+`]"`, 1)

	writeFile(t, cfg, "version: 1\nmax_visitors: 200\ntokens: file.yaml\nlisten: 127.0.0.1:1\n")
	s.waitLog(t, `msg="config reloaded" trigger="file changed" files=[`+cfg+`] added=[] removed=[] changed=[]`, 1)
	if strings.Contains(s.stderr.String(), "needs a restart") {
		t.Fatalf("a setting given by flag asked for a restart:\n%s", &s.stderr)
	}
	if _, err := s.agent(t, "secret-alice", "web"); err != nil {
		t.Fatalf("token of --tokens: %v", err)
	}
	s.mustRefuse(t, "secret-bob", "api")

	// The flag's file is still watched.
	writeFile(t, flagTokens, "- {token: secret-alice, identity: alice, names: [web]}\n- {token: secret-carol, identity: carol, names: [shop]}\n")
	s.waitLog(t, `added=[carol]`, 1)
	if _, err := s.agent(t, "secret-carol", "shop"); err != nil {
		t.Fatal(err)
	}

	// SIGHUP reloads the file too.
	hup(t)
	s.waitLog(t, `msg="config reloaded" trigger=SIGHUP added=[] removed=[] changed=[]`, 1)

	// A second registerer is put in force live: the tunnel online is
	// registered with it, and with it only.
	s.waitLog(t, `msg="register domain 'web' -> '`, 1)
	writeFile(t, cfg, "version: 1\nmax_visitors: 200\ntokens: file.yaml\nregister:\n  - log: {}\n  - log: {}\n")
	s.waitLog(t, `registerers_added=[log] registerers_removed=[]`, 1)
	s.waitLog(t, `msg="register domain 'web' -> '`, 2)
	if strings.Contains(s.stderr.String(), "needs a restart") || strings.Contains(s.stderr.String(), "unregister domain 'web'") {
		t.Fatalf("after a registerer added:\n%s", &s.stderr)
	}
}

// fakeRegs records the registerers and the hosts put in force.
type fakeRegs struct {
	set   [][]gateway.Registerer
	hosts []gateway.Hosts
}

func (f *fakeRegs) SetRegisterers(rgs []gateway.Registerer) { f.set = append(f.set, rgs) }
func (f *fakeRegs) SetHosts(h gateway.Hosts) error {
	f.hosts = append(f.hosts, h)
	return nil
}

// A reload of a file unchanged changes nothing and asks for no restart;
// a register list changed is put in force, keeping the registerers whose
// module is unchanged; settingValues does not touch the command it reads.
func TestConfigReloadBuild(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "gateway.yaml")
	writeFile(t, filepath.Join(dir, "tokens.yaml"), "- {token: secret-alice, identity: alice, names: [web]}\n")
	writeFile(t, cfg, "version: 1\nlisten: 127.0.0.1:0\nauth:\n  - tokens: {file: tokens.yaml}\n  - allow_all: {}\n")
	args := []string{"--config", cfg}
	var c serverCmd
	fr := serverResolver()
	if err := cli.Parse(&c, "diglett-server", serverDesc, args, io.Discard, io.Discard, fr); err != nil {
		t.Fatal(err)
	}
	before, err := settingValues(&c)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:0" || before["listen"] != "127.0.0.1:0" || before["max_visitors"] != "65536" {
		t.Fatalf("settings %v, listen %q", before, c.Listen)
	}
	log := slog.New(slog.DiscardHandler)
	_, started, err := c.modules(serverFile(fr), log, nil)
	if err != nil {
		t.Fatal(err)
	}
	regs := &fakeRegs{}
	src := c.configSource(args, serverFile(fr), regs, started, nil, nil, log)
	build := func() authSnapshot {
		t.Helper()
		snap, err := src.Build()
		if err != nil {
			t.Fatal(err)
		}
		snap.Commit()
		return snap
	}
	snap := build()
	if len(snap.Restart) != 0 || snap.Identities["alice"] == "" || len(regs.set) != 0 {
		t.Fatalf("unchanged file: restart %v, identities %v, registerers set %d times", snap.Restart, snap.Identities, len(regs.set))
	}
	if got := fmt.Sprint(snap.Changes); got != "[auth_modules_added [] auth_modules_removed [] registerers_added [] registerers_removed [] hosts_added [] hosts_removed []]" {
		t.Fatalf("changes %s", got)
	}

	// The default register list given explicitly: nothing changes.
	writeFile(t, cfg, "version: 1\nlisten: 127.0.0.1:0\nregister:\n  - log: {}\nauth:\n  - tokens: {file: tokens.yaml}\n")
	snap = build()
	if len(snap.Restart) != 0 || len(regs.set) != 0 || fmt.Sprint(snap.Changes) != "[auth_modules_added [] auth_modules_removed [allow_all] registerers_added [] registerers_removed [] hosts_added [] hosts_removed []]" {
		t.Fatalf("restart %v, changes %v, registerers set %d times", snap.Restart, snap.Changes, len(regs.set))
	}

	// A second registerer: put in force, the first kept as it is.
	writeFile(t, cfg, "version: 1\nlisten: 127.0.0.1:0\nregister:\n  - log: {}\n  - log: {}\nauth:\n  - tokens: {file: tokens.yaml}\n")
	snap = build()
	if len(snap.Restart) != 0 || len(regs.set) != 1 || fmt.Sprint(snap.Changes[4:8]) != "[registerers_added [log] registerers_removed []]" {
		t.Fatalf("restart %v, changes %v, registerers set %d times", snap.Restart, snap.Changes, len(regs.set))
	}
	if got := regs.set[0]; len(got) != 2 || got[0] != started[0] || got[1] == started[0] {
		t.Fatalf("registerers put in force %v, want the one kept (%p) and a new one", got, started[0])
	}
}
