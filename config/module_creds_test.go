package config

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/diglett/diglett/auth/basic"
	"github.com/diglett/diglett/auth/bearer"
	"github.com/diglett/diglett/auth/external"
	"github.com/diglett/diglett/gateway"
)

// TestCredsModules builds basic, bearer and external from a file, with
// their files relative to it, and logs in through the chain they make.
func TestCredsModules(t *testing.T) {
	dir := t.TempDir()
	hash, err := basic.HashBcrypt("alice pw", bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("ci-token"))
	files := map[string]string{
		"users.yaml": "- user: alice\n  password_hash: \"" + hash + "\"\n  names: [alice]\n",
		"deploy.tok": "deploy-token\n",
		"gateway.yaml": `version: 1
auth:
  - basic: {file: users.yaml}
  - bearer: {sha256: ` + hex.EncodeToString(sum[:]) + `, identity: ci, names: [ci-*]}
  - bearer: {token_file: deploy.tok, identity: deploy, names: deploy}
  - external: {url: "http://127.0.0.1:1/check", scheme: Token, timeout: 2s, cache: 0s, cache_size: 10}
`,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f, err := LoadServer(filepath.Join(dir, "gateway.yaml"), testSchema)
	if err != nil {
		t.Fatal(err)
	}
	auths, err := f.Authenticators(quiet)
	if err != nil {
		t.Fatal(err)
	}
	if len(auths) != 4 {
		t.Fatalf("%d authenticators", len(auths))
	}
	if _, ok := auths[0].(*basic.Users); !ok {
		t.Errorf("auths[0] = %T", auths[0])
	}
	if _, ok := auths[1].(*bearer.Bearer); !ok {
		t.Errorf("auths[1] = %T", auths[1])
	}
	if w, ok := auths[3].(*external.Webhook); !ok {
		t.Errorf("auths[3] = %T", auths[3])
	} else {
		defer w.Close()
	}
	ctx := context.Background()
	ch := Chain(auths[:3])
	for _, tc := range []struct {
		c    gateway.Credentials
		want string
	}{
		{gateway.Credentials{User: "alice", Password: "alice pw"}, "alice"},
		{gateway.Credentials{Token: "ci-token"}, "ci"},
		{gateway.Credentials{Token: "deploy-token"}, "deploy"},
	} {
		id, err := ch.Authenticate(ctx, tc.c)
		if err != nil || id.Name != tc.want {
			t.Errorf("%s: %v, %v", tc.want, id, err)
		}
	}
	if _, err := ch.Authenticate(ctx, gateway.Credentials{User: "alice", Password: "wrong"}); !errors.Is(err, gateway.ErrUnauthorized) {
		t.Errorf("wrong password: %v", err)
	}
}

func TestCredsModuleErrors(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "plain.yaml"), []byte("- user: a\n  password: hunter2\n  names: [a]\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "notca.pem"), []byte("not a certificate\n"), 0o600)
	tests := map[string]struct{ content, want string }{
		"basic without file":  {"version: 1\nauth:\n  - basic: {}\n", `:3: auth: basic: no file`},
		"basic plaintext":     {"version: 1\nauth:\n  - basic: {file: plain.yaml}\n", `plain.yaml:2: password: passwords are not kept in clear`},
		"bearer no token":     {"version: 1\nauth:\n  - bearer: {identity: a, names: [a]}\n", `:3: auth: bearer: give the token as exactly one of`},
		"bearer two tokens":   {"version: 1\nauth:\n  - bearer: {token: x, sha256: ab, identity: a, names: [a]}\n", `exactly one of`},
		"bearer bad sha256":   {"version: 1\nauth:\n  - bearer: {sha256: xyz, identity: a, names: [a]}\n", `sha256: want 64 hex digits`},
		"bearer no identity":  {"version: 1\nauth:\n  - bearer: {token: x, names: [a]}\n", `no identity`},
		"bearer key":          {"version: 1\nauth:\n  - bearer: {tokn: x}\n", `unknown key "tokn"`},
		"external no url":     {"version: 1\nauth:\n  - external: {}\n", `:3: auth: external: no url`},
		"external bad url":    {"version: 1\nauth:\n  - external: {url: auth.internal}\n", `url: want an http:// or https:// URL`},
		"external timeout":    {"version: 1\nauth:\n  - external: {url: \"https://a/\", timeout: 0s}\n", `timeout: want a duration above zero`},
		"external cache":      {"version: 1\nauth:\n  - external: {url: \"https://a/\", cache: -1s}\n", `cache: want a duration`},
		"external cache size": {"version: 1\nauth:\n  - external: {url: \"https://a/\", cache_size: 0}\n", `cache_size: want a count above zero`},
		"external ca_file":    {"version: 1\nauth:\n  - external: {url: \"https://a/\", ca_file: notca.pem}\n", `no PEM certificates`},
		"external no ca_file": {"version: 1\nauth:\n  - external: {url: \"https://a/\", ca_file: none.pem}\n", `ca_file: open`},
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
			_, err = f.Authenticators(quiet)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one that says %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("error shows a password: %v", err)
			}
		})
	}
}
