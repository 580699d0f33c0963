package servercli

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/alecthomas/kong"

	"github.com/diglett/diglett/internal/cli"
)

// TestConfigPrecedence checks flag > DIGLETT_* env > file > default.
func TestConfigPrecedence(t *testing.T) {
	p := writeConfig(t, "gateway.yaml", `version: 1
lease: 30s
listen: 127.0.0.1:1111
max_visitors: 7
domain: file.example
quic: false
trusted_proxies: [10.0.0.0/8, 192.0.2.1]
data_dir: state
`)
	t.Setenv("DIGLETT_LISTEN", "127.0.0.1:2222")
	t.Setenv("DIGLETT_LEASE", "40s")
	t.Setenv("DIGLETT_CONFIG", p)
	var c serverCmd
	fr := serverResolver()
	if err := cli.Parse(&c, "diglett-server", serverDesc, []string{"--lease", "50s"}, io.Discard, io.Discard, fr); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		what      string
		got, want any
	}{
		{"flag over env and file", c.Lease, 50 * time.Second},
		{"env over file", c.Listen, "127.0.0.1:2222"},
		{"file over default", c.MaxVisitors, 7},
		{"file string", c.Domain, "file.example"},
		{"file bool over default true", c.QUIC, false},
		{"file list", c.TrustedProxies, []string{"10.0.0.0/8", "192.0.2.1"}},
		{"file path, from the file's directory", c.DataDir, filepath.Join(filepath.Dir(p), "state")},
		{"default", c.HTTPResponseTimeout, 60 * time.Second},
	} {
		if !reflect.DeepEqual(tc.got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.what, tc.got, tc.want)
		}
	}
}

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "tokens.yaml"), []byte("- token: s3cret\n  names: [web]\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "bad-tokens.yaml"), []byte("- token: s3cret\n  nmaes: [web]\n"), 0o600)
	good := filepath.Join(dir, "gateway.yaml")
	os.WriteFile(good, []byte("version: 1\nlisten: 127.0.0.1:0\nauth:\n  - tokens: {file: tokens.yaml}\nregister:\n  - log: {}\n"), 0o600)
	var out, errb bytes.Buffer
	if err := Server(context.Background(), []string{"check-config", good}, &out, &errb); err != nil {
		t.Fatalf("good file refused: %v", err)
	}
	if out.String() != good+": ok\n" {
		t.Errorf("stdout = %q, want %q", &out, good+": ok\n")
	}

	for name, tc := range map[string]struct {
		content string
		want    []string
	}{
		"file errors": {"version: 1\nlisten: 127.0.0.1:0\nlease: soon\nlistn: x\nauth:\n  - tokns: {}\n", []string{
			":3: lease: want a duration such as 60s, got \"soon\"",
			":4: unknown key \"listn\" (did you mean \"listen\"?)",
			":6: auth: unknown module \"tokns\" (known: allow_all, ",
		}},
		"tokens file":  {"version: 1\nauth:\n  - tokens: {file: bad-tokens.yaml}\n", []string{"bad-tokens.yaml:2: unknown key \"nmaes\""}},
		"values":       {"version: 1\nports: 9-1\ncert: tokens.yaml\n", []string{"--ports \"9-1\"", "--cert and --key go together"}},
		"both tokens":  {"version: 1\ntokens: tokens.yaml\nauth:\n  - allow_all: {}\n", []string{":2: tokens: give the tokens file either as tokens: or in the auth list, not both"}},
		"enum":         {"version: 1\nvisitor_access: maybe\n", []string{":2: visitor_access: want one of allow, deny, require, got \"maybe\""}},
		"needs domain": {"version: 1\nhttp_addr: :8080\n", []string{"need --domain"}},
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".yaml")
			os.WriteFile(p, []byte(tc.content), 0o600)
			var out bytes.Buffer
			err := Server(context.Background(), []string{"check-config", p}, &out, io.Discard)
			if err == nil {
				t.Fatalf("accepted; stdout %q", &out)
			}
			if out.Len() != 0 {
				t.Errorf("stdout = %q, want nothing", &out)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%v\ndoes not say %q", err, w)
				}
			}
		})
	}
	if err := Server(context.Background(), []string{"check-config", filepath.Join(dir, "none.yaml")}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "none.yaml") {
		t.Errorf("missing file: err = %v", err)
	}
}

func writeConfig(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigEveryFlagHasAKey checks that the file takes every flag of
// the gateway, by its snake_case name (the agent's: cli's test of the
// same name).
func TestConfigEveryFlagHasAKey(t *testing.T) {
	p := writeConfig(t, "gateway.yaml", "version: 1\nmax_visitors_per_tunnel: 3\nhttp_max_requests_per_source: 4\nkeep_alive_period: 2s\nmax_idle_timeout: 9s\nvisitor_access: deny\n")
	var c serverCmd
	fr := serverResolver()
	if err := cli.Parse(&c, "diglett-server", serverDesc, []string{"--config", p}, io.Discard, io.Discard, fr); err != nil {
		t.Fatal(err)
	}
	if c.MaxVisitorsPerTunnel != 3 || c.HTTPMaxRequestsPerSource != 4 || c.KeepAlive != 2*time.Second || c.MaxIdle != 9*time.Second || c.VisitorAccess != "deny" {
		t.Errorf("settings not applied: %+v", c)
	}
	// A file named in the file must exist, as with the flag.
	p = writeConfig(t, "gateway.yaml", "version: 1\nacme_ca_root: ca.pem\n")
	c = serverCmd{}
	fr = serverResolver()
	if err := cli.Parse(&c, "diglett-server", serverDesc, []string{"--config", p}, io.Discard, io.Discard, fr); err == nil || !strings.Contains(err.Error(), filepath.Join(filepath.Dir(p), "ca.pem")) {
		t.Fatalf("missing acme_ca_root file: err = %v", err)
	}
	// Every flag has a key: the help, the version and --config itself aside.
	for _, app := range []any{&serverCmd{}} {
		k, err := kong.New(app)
		if err != nil {
			t.Fatal(err)
		}
		schema := cli.SchemaOf(k.Model.Node)
		for _, f := range k.Model.Node.Flags {
			if _, ok := schema[strings.ReplaceAll(f.Name, "-", "_")]; !ok && cli.InFile(f) {
				t.Errorf("flag --%s has no key", f.Name)
			}
		}
		if len(schema) < 20 {
			t.Errorf("only %d keys", len(schema))
		}
	}
}
