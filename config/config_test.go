package config

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diglett/diglett/auth/tokens"
	"github.com/diglett/diglett/gateway"
)

var quiet = Env{Logger: slog.New(slog.DiscardHandler)}

var testSchema = Schema{
	"listen": String, "domain": String, "lease": Duration, "max_visitors": Int,
	"quic": Bool, "trusted_proxies": List, "tokens": Path, "data_dir": Path,
}

func TestLoadServerGood(t *testing.T) {
	f, err := LoadServer(filepath.Join("testdata", "gateway.yaml"), testSchema)
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{
		"listen": "0.0.0.0:20000", "domain": "gateway.example.org", "lease": "90s",
		"max_visitors": "1000", "quic": "false", "trusted_proxies": "10.0.0.0/8,192.0.2.1",
	} {
		if s, ok := f.Lookup(key); !ok || s.Value != want {
			t.Errorf("%s = %q (set %v), want %q", key, s.Value, ok, want)
		}
	}
	if s, _ := f.Lookup("lease"); s.Line != 6 {
		t.Errorf("lease on line %d, want 6", s.Line)
	}
	if len(f.Auth) != 2 || f.Auth[0].Name != "tokens" || f.Auth[1].Name != "allow_all" {
		t.Fatalf("auth = %+v", f.Auth)
	}
	var logs bytes.Buffer
	auths, err := f.Authenticators(Env{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "level=WARN msg=\"auth module allow_all: ANYONE") {
		t.Errorf("allow_all logged no warning: %q", &logs)
	}
	if _, ok := auths[0].(*tokens.Tokens); !ok || len(auths) != 2 {
		t.Fatalf("authenticators = %#v", auths)
	}
	regs, err := f.Registerers(quiet)
	if err != nil || len(regs) != 1 {
		t.Fatalf("registerers = %v, %v", regs, err)
	}
}

// write writes a file in a temp dir and returns its path.
func write(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadServerErrors(t *testing.T) {
	tests := map[string]struct {
		content string
		want    []string // each line of the error, after "gateway.yaml:"
	}{
		"unknown key": {"version: 1\nlisten: x\nlistn: y\n", []string{`3: unknown key "listn" (did you mean "listen"?)`}},
		"far key":     {"version: 1\nzzzzzzzz: y\n", []string{`2: unknown key "zzzzzzzz"`}},
		"duration":    {"version: 1\n\n\nlease: soon\n", []string{`4: lease: want a duration such as 60s, got "soon"`}},
		"int":         {"version: 1\nmax_visitors: many\n", []string{`2: max_visitors: want a whole number, got "many"`}},
		"bool":        {"version: 1\nquic: \"yes\"\n", []string{`2: quic: want true or false, got "yes"`}},
		"mapping":     {"version: 1\nlisten: {a: b}\n", []string{`2: listen: want a string, got a mapping`}},
		"list item":   {"version: 1\ntrusted_proxies: [[a]]\n", []string{`2: trusted_proxies: want a list of strings, got a list in it`}},
		"bad version": {"version: 2\nlisten: x\n", []string{`1: version: want 1, got "2"`}},
		"no version":  {"listen: x\n", []string{`1: no version: start the file with "version: 1"`}},
		"twice":       {"version: 1\nlisten: a\nlisten: b\n", []string{`3: listen: given twice (first on line 2)`}},
		"not yaml":    {"version: 1\nlisten: [\n", []string{`2: not valid YAML: did not find expected node content`}},
		"not mapping": {"- a\n", []string{`1: want a mapping of keys to values`}},
		"empty":       {"", []string{`empty file`}},
		"unknown module": {"version: 1\nauth:\n  - tokenz: {}\n", []string{
			`3: auth: unknown module "tokenz" (known: allow_all, `}},
		"register module in auth": {"version: 1\nauth:\n  - log: {}\n", []string{
			`3: auth: unknown module "log" (known: allow_all, `}},
		"module list":          {"version: 1\nregister: log\n", []string{`2: register: want a list of modules`}},
		"two in one":           {"version: 1\nauth:\n  - {tokens: {}, allow_all: {}}\n", []string{`3: auth: want one module per item`}},
		"tunnels on a gateway": {"version: 1\ntunnels: []\n", []string{`2: unknown key "tunnels"`}},
		"every error": {"version: 3\nlease: soon\nlistn: x\n", []string{
			`1: version: want 1, got "3"`, `2: lease: want a duration such as 60s, got "soon"`, `3: unknown key "listn" (did you mean "listen"?)`}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := write(t, "gateway.yaml", tc.content)
			_, err := LoadServer(p, testSchema)
			if err == nil {
				t.Fatal("accepted")
			}
			got := err.Error()
			for _, w := range tc.want {
				full := p + ": " + w // no line: the whole file
				if w[0] >= '0' && w[0] <= '9' {
					full = p + ":" + w
				}
				if !strings.Contains(got, full) {
					t.Errorf("error\n%s\ndoes not say\n%s", got, w)
				}
			}
			if lines := strings.Count(got, "\n") + 1; lines != len(tc.want) {
				t.Errorf("%d errors, want %d:\n%s", lines, len(tc.want), got)
			}
			for _, bad := range []string{"!!", "yaml.", "unmarshal", "config."} {
				if strings.Contains(got, bad) {
					t.Errorf("error names a type (%q):\n%s", bad, got)
				}
			}
			var es Errors
			if !errors.As(err, &es) {
				t.Errorf("error is %T, want Errors", err)
			}
		})
	}
}

func TestModuleErrors(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "bad-tokens.yaml"), []byte("- token: x\n  nmaes: [a]\n"), 0o600)
	tests := map[string]struct{ content, want string }{
		"tokens without file": {"version: 1\nauth:\n  - tokens: {}\n", `:3: auth: tokens: no file`},
		"tokens key":          {"version: 1\nauth:\n  - tokens: {fil: t.yaml}\n", `:3: auth: tokens: unknown key "fil" (did you mean "file"?)`},
		"tokens settings":     {"version: 1\nauth:\n  - tokens: t.yaml\n", `:3: auth: tokens: want a mapping of settings`},
		"missing tokens file": {"version: 1\nauth:\n  - tokens: {file: none.yaml}\n", `none.yaml: no such file`},
		"bad tokens file":     {"version: 1\nauth:\n  - tokens: {file: bad-tokens.yaml}\n", `bad-tokens.yaml:2: unknown key "nmaes"`},
		"allow_all settings":  {"version: 1\nauth:\n  - allow_all: {x: 1}\n", `:3: auth: allow_all: unknown key "x" (this module takes no settings)`},
		"log settings":        {"version: 1\nregister:\n  - log: {x: 1}\n", `:3: register: log: unknown key "x"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, "gateway.yaml")
			if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := LoadServer(p, testSchema)
			if err != nil {
				t.Fatal(err)
			}
			_, aerr := f.Authenticators(quiet)
			_, rerr := f.Registerers(quiet)
			err = errors.Join(aerr, rerr)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one that says %q", err, tc.want)
			}
		})
	}
}

// TestRelativePaths checks that a Path setting and a module's file are
// taken from the config file's directory, not the working directory.
func TestRelativePaths(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "tokens.yaml"), []byte("- token: x\n  names: [a]\n"), 0o600)
	p := filepath.Join(dir, "gateway.yaml")
	os.WriteFile(p, []byte("version: 1\ndata_dir: state\ntokens: /abs/t.yaml\nauth:\n  - tokens: {file: tokens.yaml}\n"), 0o600)
	f, err := LoadServer(p, testSchema)
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := f.Lookup("data_dir"); s.Value != filepath.Join(dir, "state") {
		t.Errorf("data_dir = %q, want it in %s", s.Value, dir)
	}
	if s, _ := f.Lookup("tokens"); s.Value != "/abs/t.yaml" {
		t.Errorf("tokens = %q, want the absolute path kept", s.Value)
	}
	if _, err := f.Authenticators(quiet); err != nil {
		t.Fatalf("tokens file beside the config not found: %v", err)
	}
}

func TestLoadAgent(t *testing.T) {
	schema := Schema{"gateway": List, "token": String, "transport": String}
	f, err := LoadAgent(filepath.Join("testdata", "agent.yaml"), schema)
	if err != nil {
		t.Fatal(err)
	}
	want := []Tunnel{{Name: "web", Backend: "localhost:3000", Line: 6}, {Name: "api", Backend: "localhost:8080", H2C: true, Line: 7}}
	if len(f.Tunnels) != 2 {
		t.Fatalf("tunnels = %+v", f.Tunnels)
	}
	for i, w := range want {
		g := f.Tunnels[i]
		if g.Name != w.Name || g.Backend != w.Backend || g.H2C != w.H2C || g.Line != w.Line {
			t.Errorf("tunnel %d = %+v, want %+v", i, g, w)
		}
	}
	if s, _ := f.Lookup("gateway"); len(s.List) != 1 || s.List[0] != "gateway.example.org:20000" {
		t.Errorf("gateway = %+v", s)
	}
	for name, tc := range map[string]struct{ content, want string }{
		"no backend":    {"version: 1\ntunnels:\n  - {name: web}\n", `:3: tunnels[1]: want a name and a backend`},
		"twice":         {"version: 1\ntunnels:\n  - {name: a, backend: '1'}\n  - {name: a, backend: '2'}\n", `:4: tunnels[2]: tunnel "a" given twice (first on line 3)`},
		"h2c type":      {"version: 1\ntunnels:\n  - {name: a, backend: '1', h2c: sure}\n", `:3: tunnels[1].h2c: want true or false, got "sure"`},
		"tunnel key":    {"version: 1\ntunnels:\n  - {name: a, backnd: '1'}\n", `:3: tunnels[1]: unknown key "backnd" (did you mean "backend"?)`},
		"auth on agent": {"version: 1\nauth: []\n", `:2: unknown key "auth"`},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := LoadAgent(write(t, "agent.yaml", tc.content), schema)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one that says %q", err, tc.want)
			}
		})
	}
}

// fakeAuth takes one token and allows one name.
type fakeAuth struct{ token, name string }

func (a fakeAuth) Authenticate(_ context.Context, c gateway.Credentials) (gateway.Identity, error) {
	if c.Token != a.token {
		return gateway.Identity{}, gateway.ErrUnauthorized
	}
	return gateway.Identity{Name: a.token, Claims: map[string]any{"k": "v"}}, nil
}

func (a fakeAuth) Authorize(_ context.Context, _ gateway.Identity, name string) error {
	if name != a.name {
		return gateway.ErrForbidden
	}
	return nil
}

func TestChain(t *testing.T) {
	ctx := context.Background()
	broken := gateway.AuthFuncs{
		AuthenticateFunc: func(context.Context, gateway.Credentials) (gateway.Identity, error) {
			return gateway.Identity{}, errors.New("backend down")
		},
	}
	ch := Chain{fakeAuth{"a", "alpha"}, fakeAuth{"b", "beta"}}
	for _, tc := range []struct {
		token, name string
		authOK, ok  bool
	}{
		{"a", "alpha", true, true},
		{"a", "beta", true, false}, // asks the first, which took "a"
		{"b", "beta", true, true},
		{"b", "alpha", true, false},
		{"c", "", false, false},
	} {
		id, err := ch.Authenticate(ctx, gateway.Credentials{Token: tc.token})
		if tc.authOK != (err == nil) {
			t.Fatalf("token %s: %v", tc.token, err)
		}
		if !tc.authOK {
			if !errors.Is(err, gateway.ErrUnauthorized) {
				t.Errorf("token %s: err = %v, want ErrUnauthorized", tc.token, err)
			}
			continue
		}
		if id.Claims["k"] != "v" {
			t.Errorf("claims of the module lost: %v", id.Claims)
		}
		err = ch.Authorize(ctx, id, tc.name)
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, gateway.ErrForbidden)) {
			t.Errorf("token %s, name %s: %v", tc.token, tc.name, err)
		}
	}
	if err := ch.Authorize(ctx, gateway.Identity{Name: "x"}, "alpha"); !errors.Is(err, gateway.ErrForbidden) {
		t.Errorf("identity from elsewhere: %v, want ErrForbidden", err)
	}
	// A failing authenticator stops the chain: its error is not a refusal.
	if _, err := (Chain{broken, fakeAuth{"a", "alpha"}}).Authenticate(ctx, gateway.Credentials{Token: "a"}); err == nil || errors.Is(err, gateway.ErrUnauthorized) {
		t.Errorf("broken authenticator: err = %v", err)
	}
}

// refuser refuses every login with its reason, or as having found no
// credentials of its kind when reason is empty, and counts its closes.
type refuser struct {
	reason string
	closed *int
}

func (r refuser) Authenticate(context.Context, gateway.Credentials) (gateway.Identity, error) {
	if r.reason == "" {
		return gateway.Identity{}, gateway.ErrNoCredentials
	}
	return gateway.Identity{}, fmt.Errorf("%w: %s", gateway.ErrUnauthorized, r.reason)
}

func (refuser) Authorize(context.Context, gateway.Identity, string) error {
	return gateway.ErrForbidden
}

func (r refuser) Close() error {
	*r.closed++
	return nil
}

func TestChainRefusalReasons(t *testing.T) {
	ctx := context.Background()
	var closed int
	none := refuser{closed: &closed}
	for _, tc := range []struct {
		chain Chain
		want  string
	}{
		{Chain{}, "login refused"},
		{Chain{none, none}, gateway.ErrNoCredentials.Error()},
		// Modules that found their kind of credentials explain; those
		// that found none stay quiet; a reason is said once.
		{Chain{none, refuser{"token expired", &closed}, none}, "login refused: token expired"},
		{Chain{refuser{"unknown token", &closed}, none, refuser{"token expired", &closed}, refuser{"unknown token", &closed}}, "login refused: unknown token; token expired"},
	} {
		_, err := tc.chain.Authenticate(ctx, gateway.Credentials{Token: "x"})
		if !errors.Is(err, gateway.ErrUnauthorized) || err.Error() != tc.want {
			t.Errorf("%d modules: err = %v, want %q", len(tc.chain), err, tc.want)
		}
	}
	// Closing a chain closes the members that hold resources, and only
	// those.
	closed = 0
	if err := (Chain{none, fakeAuth{"a", "alpha"}, none}).Close(); err != nil || closed != 2 {
		t.Errorf("Close: err %v, %d members closed, want 2", err, closed)
	}
}

// FuzzParse checks that no file makes the parser panic. (Modules are not
// built: a module's file could be any path, /dev/zero among them.)
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"version: 1\nlisten: x\nauth:\n  - tokens: {file: t.yaml}\nregister:\n  - log: {}\n",
		"version: 1\ntunnels:\n  - {name: a, backend: '1', h2c: true, allow_ips: [10.0.0.0/8]}\n",
		"version: 1\nlease: 5s\ntrusted_proxies: [a, b]\nquic: false\n",
		"- a\n", "", "version: [1]\n", "version: 1\nauth: [x, {a: b, c: d}, [1]]\n", "&a [*a]\n",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data string) {
		file, err := parse("f.yaml", "/cfg", []byte(data), testSchema, []string{"auth", "register", "tunnels"})
		if err == nil && file == nil {
			t.Fatal("no file and no error")
		}
	})
}
