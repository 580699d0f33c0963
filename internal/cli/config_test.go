package cli

import (
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/alecthomas/kong"

	"github.com/diglett/diglett/config/configfile"
)

func writeConfig(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigEveryFlagHasAKey checks that the file takes every flag of
// the agent, by its snake_case name (the server's: servercli's test of
// the same name).
func TestConfigEveryFlagHasAKey(t *testing.T) {
	// Every flag has a key: the help, the version and --config itself aside.
	for _, app := range []any{&agentCmd{}} {
		k, err := kong.New(app)
		if err != nil {
			t.Fatal(err)
		}
		schema := SchemaOf(k.Model.Node)
		for _, f := range k.Model.Node.Flags {
			if _, ok := schema[strings.ReplaceAll(f.Name, "-", "_")]; !ok && InFile(f) {
				t.Errorf("flag --%s has no key", f.Name)
			}
		}
		if len(schema) < 20 {
			t.Errorf("only %d keys", len(schema))
		}
	}
}

func TestAgentTunnelGroups(t *testing.T) {
	p := writeConfig(t, "agent.yaml", `version: 1
gateway: [127.0.0.1:1]
tunnels:
  - {name: web, backend: "3000"}
  - {name: api, backend: localhost:8080, h2c: true}
  - {name: www, backend: "127.0.0.1:3001"}
  - {name: ssh, backend: "22", port: 30022}
`)
	var c agentCmd
	fr := &FileResolver{Load: configfile.LoadAgent}
	if err := Parse(&c, "diglett", "", []string{"--config", p}, io.Discard, io.Discard, fr); err != nil {
		t.Fatal(err)
	}
	groups, err := c.tunnelGroups(fr.file)
	if err != nil {
		t.Fatal(err)
	}
	want := []tunnelGroup{
		{names: []string{"web", "www"}, backends: map[string]string{"web": "localhost:3000", "www": "127.0.0.1:3001"}},
		{names: []string{"api"}, backends: map[string]string{"api": "localhost:8080"}, h2c: true},
		{names: []string{"ssh"}, backends: map[string]string{"ssh": "localhost:22"}, port: 30022},
	}
	if !reflect.DeepEqual(groups, want) {
		t.Errorf("groups =\n%+v\nwant\n%+v", groups, want)
	}
	if c.Gateway[0] != "127.0.0.1:1" {
		t.Errorf("gateway = %v", c.Gateway)
	}

	c = agentCmd{}
	fr = &FileResolver{Load: configfile.LoadAgent}
	if err := Parse(&c, "diglett", "", []string{"--config", p, "-n", "x", "9000"}, io.Discard, io.Discard, fr); err != nil {
		t.Fatal(err)
	}
	if _, err := c.tunnelGroups(fr.file); err == nil || !strings.Contains(err.Error(), "give no --name or BACKEND") {
		t.Errorf("tunnels and --name: err = %v", err)
	}
	c = agentCmd{Name: []string{"x"}}
	if _, err := c.tunnelGroups(nil); err == nil || !strings.Contains(err.Error(), "<backend>") {
		t.Errorf("no backend: err = %v", err)
	}
	c = agentCmd{Backend: "9000"}
	if _, err := c.tunnelGroups(nil); err == nil || !strings.Contains(err.Error(), "--name") {
		t.Errorf("no name: err = %v", err)
	}
}
