package cli

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/config/configfile"
)

// TestAgentCredentials fills diglett.Config from the credential flags, the
// password's variable and the config file.
func TestAgentCredentials(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	token := file("token", "\n  tok-123  \n")
	pw := file("pw", "pass word\n")
	empty := file("empty", " \n")
	noPassword := file("nopw", "\n")
	twoLines := file("two", "a\nb\n")
	long := file("long", strings.Repeat("t", 5000))
	for _, tc := range []struct {
		name                  string
		c                     agentCmd
		env                   string // DIGLETT_PASSWORD; "-" for unset
		token, user, password string
		err                   string
	}{
		{name: "nothing", env: "-"},
		{name: "token flag", c: agentCmd{Token: "t"}, env: "-", token: "t"},
		{name: "token file", c: agentCmd{TokenFile: token}, env: "-", token: "tok-123"},
		{name: "both tokens", c: agentCmd{Token: "t", TokenFile: token}, env: "-", err: "-t and --token-file: give one, not both"},
		{name: "empty token file", c: agentCmd{TokenFile: empty}, env: "-", err: "empty"},
		{name: "long token file", c: agentCmd{TokenFile: long}, env: "-", err: "longer than 4096 bytes"},
		{name: "password file", c: agentCmd{User: "alice", PasswordFile: pw}, env: "-", user: "alice", password: "pass word"},
		{name: "password env", c: agentCmd{User: "alice"}, env: "from env", user: "alice", password: "from env"},
		{name: "user and token", c: agentCmd{User: "alice", PasswordFile: pw, Token: "t"}, env: "-", token: "t", user: "alice", password: "pass word"},
		{name: "no password", c: agentCmd{User: "alice"}, env: "-", err: "--user: give the password with --password-file FILE or DIGLETT_PASSWORD"},
		{name: "empty env", c: agentCmd{User: "alice"}, env: "", err: "DIGLETT_PASSWORD is empty"},
		{name: "file and env", c: agentCmd{User: "alice", PasswordFile: pw}, env: "x", err: "give one, not both"},
		{name: "no user", c: agentCmd{PasswordFile: pw}, env: "-", err: "a password needs --user"},
		{name: "env without user", env: "x", err: "a password needs --user"},
		{name: "two-line password", c: agentCmd{User: "alice", PasswordFile: twoLines}, env: "-", err: "more than one line"},
		{name: "empty password", c: agentCmd{User: "alice", PasswordFile: noPassword}, env: "-", err: "empty password"},
		{name: "long user", c: agentCmd{User: strings.Repeat("u", 300), PasswordFile: pw}, env: "-", err: "longer than 256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env == "-" {
				t.Setenv(passwordEnv, "")
				os.Unsetenv(passwordEnv)
			} else {
				t.Setenv(passwordEnv, tc.env)
			}
			var cfg diglett.Config
			err := tc.c.credentials(&cfg)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				for _, secret := range []string{"pass word", "tok-123", "from env"} {
					if strings.Contains(err.Error(), secret) {
						t.Fatalf("the error shows a secret: %v", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Token != tc.token || cfg.User != tc.user || cfg.Password != tc.password {
				t.Fatalf("token %q user %q password %q, want %q %q %q", cfg.Token, cfg.User, cfg.Password, tc.token, tc.user, tc.password)
			}
		})
	}
}

// TestAgentCredentialKeys: the file's user, password_file and token_file
// keys and their DIGLETT_* variables set the flags; the file's paths are
// taken from its directory.
func TestAgentCredentialKeys(t *testing.T) {
	p := writeConfig(t, "agent.yaml", "version: 1\ngateway: [gw:1]\nuser: alice\npassword_file: pw\ntoken_file: tok\n")
	for _, f := range []string{"pw", "tok"} {
		if err := os.WriteFile(filepath.Join(filepath.Dir(p), f), []byte("x\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var c agentCmd
	fr := &FileResolver{Load: configfile.LoadAgent}
	if err := Parse(&c, "diglett", "", []string{"--config", p}, io.Discard, io.Discard, fr); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(p)
	if c.User != "alice" || c.PasswordFile != filepath.Join(dir, "pw") || c.TokenFile != filepath.Join(dir, "tok") {
		t.Fatalf("user %q password_file %q token_file %q", c.User, c.PasswordFile, c.TokenFile)
	}
	t.Setenv("DIGLETT_USER", "bob")
	c = agentCmd{}
	fr = &FileResolver{Load: configfile.LoadAgent}
	if err := Parse(&c, "diglett", "", []string{"--config", p}, io.Discard, io.Discard, fr); err != nil {
		t.Fatal(err)
	}
	if c.User != "bob" {
		t.Fatalf("DIGLETT_USER: user %q", c.User)
	}
	var help bytes.Buffer
	if err := Agent(context.Background(), []string{"--help"}, &help, io.Discard); !IsHelp(err) {
		t.Fatal(err)
	}
	for _, f := range []string{"--user=USER", "--password-file=FILE", "--token-file=FILE", "DIGLETT_PASSWORD"} {
		if !strings.Contains(help.String(), f) {
			t.Errorf("diglett --help does not mention %s", f)
		}
	}
	// -t and --token-file together stop the agent before it dials.
	err := Agent(context.Background(), []string{"-g", "127.0.0.1:1", "-n", "x", "-t", "a", "--token-file", filepath.Join(dir, "tok"), "1"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "-t and --token-file") {
		t.Fatalf("err = %v", err)
	}
}
