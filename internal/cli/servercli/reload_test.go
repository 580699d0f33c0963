package servercli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diglett/diglett/auth/allowall"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/cli"
	"github.com/diglett/diglett/internal/testutil"
)

// fakeSetter records the authenticators put in force.
type fakeSetter struct {
	set []gateway.Authenticator
	res gateway.Recheck
}

func (f *fakeSetter) SetAuthenticator(_ context.Context, a gateway.Authenticator) (gateway.Recheck, error) {
	f.set = append(f.set, a)
	return f.res, nil
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// A reload logs what changed by identity, never a token; a broken file is
// refused with its file and line, and nothing is put in force.
func TestTokensReload(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tokens.yaml")
	writeFile(t, file, `
- token: secret-alice
  identity: alice
  names: [a]
- token: secret-bob
  identity: bob
  names: [b]
- token: secret-dave
  identity: dave
  names: [d]
`)
	logs := &testutil.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	srv := &fakeSetter{res: gateway.Recheck{Kept: 3, Closed: 1}}
	r := newReloader(srv, tokensSource(file), log)

	// alice may publish more, bob is gone, carol is new, dave is as he
	// was.
	writeFile(t, file, `
- token: secret-alice
  identity: alice
  names: [a, a2]
- token: secret-carol
  identity: carol
  names: [c]
- token: secret-dave
  identity: dave
  names: [d]
`)
	if err := r.reload(context.Background(), "trigger", "test"); err != nil {
		t.Fatal(err)
	}
	if len(srv.set) != 1 {
		t.Fatalf("%d authenticators put in force, want 1", len(srv.set))
	}
	want := `level=INFO msg="tokens reloaded" trigger=test added=[carol] removed=[bob] changed=[alice] sessions_kept=3 sessions_closed=1`
	if !strings.Contains(logs.String(), want) {
		t.Errorf("log lacks %s:\n%s", want, logs)
	}
	if _, err := srv.set[0].Authenticate(context.Background(), gateway.Credentials{Token: "secret-carol"}); err != nil {
		t.Errorf("new token refused: %v", err)
	}
	// A token that changes, same identity and names: changed.
	writeFile(t, file, `
- token: secret-alice-2
  identity: alice
  names: [a, a2]
- token: secret-carol
  identity: carol
  names: [c]
- token: secret-dave
  identity: dave
  names: [d]
`)
	if err := r.reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if want := `added=[] removed=[] changed=[alice]`; !strings.Contains(logs.String(), want) {
		t.Errorf("log lacks %s:\n%s", want, logs)
	}

	writeFile(t, file, `
- token: secret-erin
  identity: erin
  nmes: [e]
`)
	err := r.reload(context.Background(), "trigger", "test")
	if err == nil {
		t.Fatal("broken file reloaded")
	}
	if len(srv.set) != 2 {
		t.Fatal("broken file put in force")
	}
	if want := file + ":4"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name %s", err, want)
	}
	if !strings.Contains(logs.String(), `level=ERROR msg="tokens not reloaded: keeping those in force" err="tokens file `+file+`:4`) {
		t.Errorf("no error logged:\n%s", logs)
	}
	if strings.Contains(logs.String(), "secret-") {
		t.Errorf("a token was logged:\n%s", logs)
	}
	// The next good file is diffed against the last good one.
	writeFile(t, file, `
- token: secret-carol
  identity: carol
  names: [c]
`)
	if err := r.reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if want := `added=[] removed="[alice dave]" changed=[]`; !strings.Contains(logs.String(), want) {
		t.Errorf("log lacks %s:\n%s", want, logs)
	}
}

func TestDiffIdentities(t *testing.T) {
	a, r, c := diffIdentities(map[string]string{"x": "1", "y": "1", "z": "1"}, map[string]string{"y": "1", "z": "2", "w": "1"})
	if strings.Join(a, ",") != "w" || strings.Join(r, ",") != "x" || strings.Join(c, ",") != "z" {
		t.Errorf("added %v removed %v changed %v", a, r, c)
	}
}

// Identities default to a hash of the token, as the tokens module names
// them: a token changed without an identity is one identity removed and
// one added.
func TestTokenIdentitiesDefault(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tokens.yaml")
	writeFile(t, file, "- token: one\n  names: [x]\n")
	src := tokensSource(file)
	before, err := src.Build()
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, file, "- token: two\n  names: [x]\n")
	after, err := src.Build()
	if err != nil {
		t.Fatal(err)
	}
	added, removed, changed := diffIdentities(before.Identities, after.Identities)
	if len(added) != 1 || len(removed) != 1 || len(changed) != 0 || !strings.HasPrefix(added[0], "token-") {
		t.Errorf("added %v removed %v changed %v", added, removed, changed)
	}
}

func TestHelpMentionsWatch(t *testing.T) {
	var out, errOut testutil.Buffer
	if err := Server(context.Background(), []string{"--help"}, &out, &errOut); !cli.IsHelp(err) {
		t.Fatalf("--help: %v", err)
	}
	if !strings.Contains(out.String(), "--watch") {
		t.Errorf("help lacks --watch:\n%s", &out)
	}
}

// A file written after a build read it, while the watch was being moved
// to the build's new list of files, is reloaded at once rather than at
// the next change, which might never come.
func TestRewatchCatchesChangeDuringSwitch(t *testing.T) {
	dir := t.TempDir()
	cfg, extra := filepath.Join(dir, "config.yaml"), filepath.Join(dir, "extra.yaml")
	writeFile(t, cfg, "one\n")
	writeFile(t, extra, "x\n")
	var builds atomic.Int32
	src := authSource{
		What:  "config",
		Files: []string{cfg},
		Build: func() (authSnapshot, error) {
			n := builds.Add(1)
			data, err := os.ReadFile(cfg)
			if err != nil {
				return authSnapshot{}, err
			}
			if n == 2 {
				// The second build, after the test's write, reads the
				// file; then it is written again before the new watch
				// (over both files) begins.
				writeFile(t, cfg, "three\n")
			}
			files := []string{cfg}
			if string(data) != "one\n" {
				files = append(files, extra)
			}
			return authSnapshot{Auth: allowall.Authenticator{}, Files: files}, nil
		},
	}
	logs := &testutil.Buffer{}
	stop, err := serveReloads(t.Context(), &fakeSetter{}, src, true, nil, nil, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	writeFile(t, cfg, "two\n")
	if err := testutil.Poll(10*time.Second, func() error {
		if n := builds.Load(); n < 3 {
			return fmt.Errorf("%d builds", n)
		}
		return nil
	}); err != nil {
		t.Fatalf("the change made during the switch of watches was not reloaded: %v\n%s", err, logs)
	}
}
