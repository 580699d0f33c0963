package configfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadAgent(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "agent.yaml")
	data := "version: 1\ngateway: [gw.example]\nca: ca.pem\ntunnels:\n  - {name: web, backend: localhost:3000, h2c: true}\n  - {name: ssh, backend: \"22\", port: 30022}\n"
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := LoadAgent(p, Schema{"gateway": List, "ca": Path})
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := f.Lookup("ca"); s.Value != filepath.Join(dir, "ca.pem") {
		t.Errorf("ca = %q, want it from the file's directory", s.Value)
	}
	if s, _ := f.Lookup("gateway"); len(s.List) != 1 || s.List[0] != "gw.example" {
		t.Errorf("gateway = %+v", s)
	}
	if len(f.Tunnels) != 2 || f.Tunnels[0].Name != "web" || !f.Tunnels[0].H2C || f.Tunnels[1].Port != 30022 {
		t.Errorf("tunnels = %+v", f.Tunnels)
	}
}

// The agent's file has no gateway sections: they are unknown keys.
func TestLoadAgentRefusesServerSections(t *testing.T) {
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte("version: 1\nauth:\n  - allow_all: {}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadAgent(p, Schema{"gateway": List})
	var es Errors
	if !errors.As(err, &es) || len(es) != 1 || es[0].Line != 2 || !strings.Contains(es[0].Msg, `unknown key "auth"`) {
		t.Fatalf("err = %v", err)
	}
}

// The gateway's sections are checked against what Checks gives: without
// it no module is known and no host refused.
func TestChecks(t *testing.T) {
	data := []byte("version: 1\nauth:\n  - tokens: {file: t.yaml}\ngroups:\n  - {name: web, hosts: [bad_host], auth: [{tokens: {}}]}\nnat: {refresh: 10m}\n")
	sections := ServerSections()
	_, err := Parse("f.yaml", "/cfg", data, Schema{}, sections, nil)
	if err == nil || !strings.Contains(err.Error(), `f.yaml:3: auth: unknown module "tokens" (known: )`) || strings.Contains(err.Error(), "bad_host") || strings.Contains(err.Error(), "refresh") {
		t.Errorf("nil checks: err = %v", err)
	}
	checks := &Checks{
		Modules: map[string]ModuleSpec{"tokens": {Section: "auth", Settings: Schema{"file": Path}}},
		ValidateHost: func(h string) error {
			if strings.Contains(h, "_") {
				return errors.New("not a host name")
			}
			return nil
		},
		NATRefresh:  time.Minute,
		NATLifetime: 5 * time.Minute,
	}
	_, err = Parse("f.yaml", "/cfg", data, Schema{}, sections, checks)
	var es Errors
	if !errors.As(err, &es) || len(es) != 2 ||
		!strings.Contains(err.Error(), "f.yaml:5: groups[1]: hosts: not a host name") ||
		!strings.Contains(err.Error(), "f.yaml:6: nat: refresh 10m0s must be shorter than lifetime 5m0s") {
		t.Fatalf("err = %v", err)
	}
	f, err := Parse("f.yaml", "/cfg", []byte("version: 1\nauth:\n  - tokens: {file: t.yaml, extra: 1}\n"), Schema{}, sections, checks)
	if err != nil {
		t.Fatal(err)
	}
	s, err := f.Auth[0].Settings(f.Path, f.Dir, "auth: tokens", checks.Modules["tokens"].Settings)
	if !errors.As(err, &es) || len(es) != 1 || !strings.Contains(es[0].Msg, `auth: tokens: unknown key "extra"`) || s["file"].Value != "/cfg/t.yaml" {
		t.Errorf("module settings %+v, err = %v", s, err)
	}
}
