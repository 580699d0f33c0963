package cli

import (
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/config/configfile"
)

// parseAgent parses args (and the --config file they name) as diglett
// does, and returns the command and its tunnel groups.
func parseAgent(t *testing.T, args ...string) (*agentCmd, []tunnelGroup, error) {
	t.Helper()
	var c agentCmd
	fr := &FileResolver{Load: configfile.LoadAgent}
	if err := Parse(&c, "diglett", "", args, io.Discard, io.Discard, fr); err != nil {
		t.Fatal(err)
	}
	groups, err := c.tunnelGroups(fr.file)
	return &c, groups, err
}

func TestAgentUDPFlags(t *testing.T) {
	c, groups, err := parseAgent(t, "-g", "127.0.0.1:1", "-n", "vpn", "--udp", "--udp-idle-timeout", "30s", "--udp-max-flows", "16", "localhost:51820")
	if err != nil {
		t.Fatal(err)
	}
	if len(groups) != 1 || !groups[0].udp || groups[0].backends["vpn"] != "localhost:51820" {
		t.Errorf("groups = %+v, want one UDP group for vpn", groups)
	}
	var o diglett.ForwardOptions
	if err := c.udpOptions(&o); err != nil || o.UDPIdleTimeout != 30*time.Second || o.MaxUDPFlows != 16 {
		t.Errorf("udpOptions: %+v, %v", o, err)
	}
	c, _, _ = parseAgent(t, "-g", "127.0.0.1:1", "-n", "vpn", "--udp", "--udp-idle-timeout", "0", "51820")
	if err := c.udpOptions(&o); err != nil || o.UDPIdleTimeout >= 0 || o.MaxUDPFlows != 1024 {
		t.Errorf("--udp-idle-timeout 0 and default flows: %+v, %v; want no bound and 1024", o, err)
	}
	c, _, _ = parseAgent(t, "-g", "127.0.0.1:1", "-n", "vpn", "--udp", "--udp-max-flows", "0", "51820")
	if err := c.udpOptions(&o); err == nil {
		t.Error("--udp-max-flows 0 accepted")
	}
	for flag, want := range map[string][]string{
		"--basic-auth":     {"--basic-auth", "u:p"},
		"--h2c":            {"--h2c"},
		"--proxy-protocol": {"--proxy-protocol", "v2"},
	} {
		args := append([]string{"-g", "127.0.0.1:1", "-n", "vpn", "--udp"}, want...)
		if _, _, err := parseAgent(t, append(args, "51820")...); err == nil || !strings.Contains(err.Error(), "--udp with "+flag) {
			t.Errorf("--udp %s: err = %v", flag, err)
		}
	}
}

func TestAgentUDPTunnelsInFile(t *testing.T) {
	p := writeConfig(t, "agent.yaml", `version: 1
gateway: [127.0.0.1:1]
udp_idle_timeout: 10s
tunnels:
  - {name: web, backend: "3000"}
  - {name: vpn, backend: "51820", udp: true}
  - {name: dns, backend: "127.0.0.1:53", udp: true}
`)
	c, groups, err := parseAgent(t, "--config", p)
	if err != nil {
		t.Fatal(err)
	}
	want := []tunnelGroup{
		{names: []string{"web"}, backends: map[string]string{"web": "localhost:3000"}},
		{names: []string{"vpn", "dns"}, backends: map[string]string{"vpn": "localhost:51820", "dns": "127.0.0.1:53"}, udp: true},
	}
	if !reflect.DeepEqual(groups, want) {
		t.Errorf("groups =\n%+v\nwant\n%+v", groups, want)
	}
	if c.UDPIdle != 10*time.Second {
		t.Errorf("udp_idle_timeout = %v, want 10s", c.UDPIdle)
	}

	p = writeConfig(t, "agent.yaml", `version: 1
gateway: [127.0.0.1:1]
tunnels:
  - {name: vpn, backend: "51820", udp: true, h2c: true}
`)
	if _, _, err := parseAgent(t, "--config", p); err == nil || !strings.Contains(err.Error(), "tunnel vpn: udp with h2c") {
		t.Errorf("udp and h2c: err = %v", err)
	}
}
