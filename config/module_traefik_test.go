package config

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/register/traefik"
)

// TestTraefikModule builds the traefik module from a file: its dir is
// taken from the file's directory, and building neither makes the
// directory nor listens.
func TestTraefikModule(t *testing.T) {
	p := write(t, "gateway.yaml", `version: 1
register:
  - traefik:
      dir: dynamic
      entry_points: [websecure]
      middlewares: auth@file
      cert_resolver: le
      upstream: 10.0.0.5
      http_provider: 127.0.0.1:0
`)
	f, err := LoadServer(p, testSchema)
	if err != nil {
		t.Fatal(err)
	}
	regs, err := f.Registerers(quiet)
	if err != nil {
		t.Fatal(err)
	}
	r, ok := regs[0].(*traefik.Registerer)
	if !ok {
		t.Fatalf("registerer %T", regs[0])
	}
	defer r.Close()
	dir := filepath.Join(filepath.Dir(p), "dynamic")
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("building touched the directory: %v", err)
	}
	if r.ProviderAddr() != "" {
		t.Error("building listened")
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c, err := r.Register(context.Background(), gateway.Route{Name: "web", Port: 20001, Hosts: []string{"web.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data, err := os.ReadFile(filepath.Join(dir, "diglett-web.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"- websecure", "- auth@file", "certResolver: le", "url: http://10.0.0.5:20001"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("file lacks %q:\n%s", want, data)
		}
	}
	if _, ok := any(r).(io.Closer); !ok {
		t.Error("the module holds a listener but is no io.Closer")
	}
}

// TestTraefikModuleErrors: bad settings are refused at build, with the
// line of the module.
func TestTraefikModuleErrors(t *testing.T) {
	for name, tc := range map[string]struct{ settings, want string }{
		"no dir":        {"{}", ":3: register: traefik: no dir: give the directory"},
		"passthrough":   {"{dir: d, tls_passthrough: true, cert_resolver: le}", ":3: register: traefik: cert_resolver: has no use with tls_passthrough"},
		"public json":   {"{dir: d, http_provider: ':8081'}", `http_provider: ":8081": want a loopback address`},
		"entry point":   {"{dir: d, entry_points: ['']}", "entry_points: empty name"},
		"passthrough ?": {"{dir: d, tls_passthrough: yes please}", "tls_passthrough: want true or false"},
		"key":           {"{dir: d, entrypoints: [web]}", `unknown key "entrypoints" (did you mean "entry_points"?)`},
	} {
		t.Run(name, func(t *testing.T) {
			p := write(t, "gateway.yaml", "version: 1\nregister:\n  - traefik: "+tc.settings+"\n")
			f, err := LoadServer(p, testSchema)
			if err != nil {
				t.Fatal(err)
			}
			_, err = f.Registerers(quiet)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one that says %q", err, tc.want)
			}
		})
	}
}
