package config

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	regexec "github.com/diglett/diglett/register/exec"
	"github.com/diglett/diglett/register/webhook"
)

// TestHookModules builds exec and webhook from a file, with their files
// relative to it: the hook runs in its dir, the webhook signs with the
// key of its secret file (less the final newline).
func TestHookModules(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.Header.Get(webhook.HeaderSignature) != webhook.Sign([]byte("k3y"), body) {
			http.Error(w, "bad signature", http.StatusForbidden)
		}
	}))
	defer srv.Close()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "work"), 0o700); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"webhook.key": "k3y\n",
		"gateway.yaml": `version: 1
register:
  - exec: {command: [sh, -c, "pwd > out"], timeout: 5s, dir: work}
  - webhook: {url: "` + srv.URL + `", secret_file: webhook.key, timeout: 5s}
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
	regs, err := f.Registerers(quiet)
	if err != nil {
		t.Fatal(err)
	}
	if len(regs) != 2 {
		t.Fatalf("%d registerers", len(regs))
	}
	hook, ok := regs[0].(*regexec.Hook)
	if !ok {
		t.Fatalf("regs[0] = %T", regs[0])
	}
	if err := hook.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	if out, err := os.ReadFile(filepath.Join(dir, "work", "out")); err != nil || strings.TrimSpace(string(out)) != filepath.Join(dir, "work") {
		t.Errorf("the hook ran in %q (%v), want its dir", out, err)
	}
	wh, ok := regs[1].(*webhook.Webhook)
	if !ok {
		t.Fatalf("regs[1] = %T", regs[1])
	}
	if err := wh.Sweep(context.Background()); err != nil {
		t.Fatalf("the webhook's signature with the key file: %v", err)
	}
	if got := PathKeys("webhook"); strings.Join(got, ",") != "ca_file,secret_file" {
		t.Errorf("PathKeys(webhook) = %v", got)
	}
}

// TestHookModuleErrors: each bad setting is reported with its line.
func TestHookModuleErrors(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "empty.key"), []byte("\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "bad.pem"), []byte("not a certificate"), 0o600)
	for name, tc := range map[string]struct{ file, want string }{
		"exec no command":        {"version: 1\nregister:\n  - exec: {}\n", `:3: register: exec: no command`},
		"exec empty program":     {"version: 1\nregister:\n  - exec: {command: [\"\"]}\n", `:3: register: exec: command: give the program`},
		"exec zero timeout":      {"version: 1\nregister:\n  - exec: {command: [true], timeout: 0s}\n", `:3: register: exec: timeout: want a duration above zero`},
		"exec missing dir":       {"version: 1\nregister:\n  - exec: {command: [true], dir: nowhere}\n", `:3: register: exec: dir: stat`},
		"webhook no url":         {"version: 1\nregister:\n  - webhook: {}\n", `:3: register: webhook: no url`},
		"webhook bad url":        {"version: 1\nregister:\n  - webhook: {url: hooks.internal}\n", `:3: register: webhook: url: want an http:// or https:// URL`},
		"webhook empty secret":   {"version: 1\nregister:\n  - webhook: {url: http://x/, secret_file: empty.key}\n", `empty.key: empty`},
		"webhook missing secret": {"version: 1\nregister:\n  - webhook: {url: http://x/, secret_file: none.key}\n", `:3: register: webhook: secret_file: open`},
		"webhook bad ca":         {"version: 1\nregister:\n  - webhook: {url: https://x/, ca_file: bad.pem}\n", `bad.pem: no PEM certificates`},
		"webhook bad timeout":    {"version: 1\nregister:\n  - webhook: {url: http://x/, timeout: -1s}\n", `:3: register: webhook: timeout: want a duration above zero`},
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, "gateway.yaml")
			if err := os.WriteFile(p, []byte(tc.file), 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := LoadServer(p, testSchema)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Registerers(quiet); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
}
