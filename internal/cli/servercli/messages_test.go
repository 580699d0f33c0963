package servercli

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/diglett/diglett/internal/cli"
)

// helpOf runs a program's --help and returns what it printed.
func helpOf(t *testing.T, program string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	var err error
	switch program {
	case "diglett":
		err = cli.Agent(context.Background(), []string{"--help"}, &out, &errOut)
	case "diglett-server":
		err = Server(context.Background(), []string{"--help"}, &out, &errOut)
	}
	if !cli.IsHelp(err) {
		t.Fatalf("%s --help: err = %v", program, err)
	}
	return out.String()
}

// topFlags are the flags --help shows before the topics.
var topFlags = regexp.MustCompile(`(?s)\nFlags:\n(.*?)\n\n`)

func TestHelpGroupsFlagsByTopic(t *testing.T) {
	for program, topics := range map[string][]string{
		"diglett":        {"Gateway and login:", "Tunnel:", "Connection to the gateway:", "Backend connections:", "Logs and debugging:"},
		"diglett-server": {"Agents:", "Tunnels and TCP ports:", "HTTP(S) on shared ports:", "Limits:", "Logs and debugging:"},
	} {
		t.Run(program, func(t *testing.T) {
			help := helpOf(t, program)
			for _, topic := range append(topics, "Examples:") {
				if !strings.Contains(help, "\n"+topic+"\n") {
					t.Errorf("no topic %q in the help:\n%s", topic, help)
				}
			}
			// Every flag has a topic but these three.
			m := topFlags.FindStringSubmatch(help)
			if m == nil {
				t.Fatalf("no Flags: section:\n%s", help)
			}
			var top []string
			for _, f := range regexp.MustCompile(`(?m)^\s+(?:-\w, )?(--[a-z0-9-]+)`).FindAllStringSubmatch(m[1], -1) {
				top = append(top, f[1])
			}
			if got := strings.Join(top, " "); got != "--help --version --config" {
				t.Errorf("flags without a topic: %s (file them in flagGroups)", got)
			}
		})
	}
}

func TestHelpNamesAndPlaceholders(t *testing.T) {
	agent, server := helpOf(t, "diglett"), helpOf(t, "diglett-server")
	for _, c := range []struct{ help, want string }{
		{agent, "($DIGLETT_H2C)"},
		{agent, "--allow-ips=CIDR,..."},
		{agent, "--gateway=HOST[:PORT]"},
		{server, "--trusted-proxies=CIDR,..."},
		{server, "($DIGLETT_MAX_NAMES_PER_IDENTITY)"},
	} {
		if !strings.Contains(c.help, c.want) {
			t.Errorf("help lacks %q", c.want)
		}
	}
	for _, bad := range []string{"_2_", "CIDR,...,..."} {
		if strings.Contains(agent+server, bad) {
			t.Errorf("help shows %q", bad)
		}
	}
}

func TestDurationWithoutUnit(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  string
		args []string
		want string
	}{
		{"flag", "", []string{"--lease", "60"}, `--lease: "60" has no unit: want a duration with a unit, such as 60s or 5m`},
		{"environment", "60", nil, `"60" has no unit: want a duration with a unit, such as 60s or 5m`},
		{"not a number", "", []string{"--lease", "soon"}, `--lease: "soon": want a duration with a unit, such as 60s or 5m`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv("DIGLETT_LEASE", tc.env)
			}
			var c serverCmd
			var out, errOut bytes.Buffer
			err := cli.Parse(&c, "diglett-server", "", tc.args, &out, &errOut)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	var c serverCmd
	var out, errOut bytes.Buffer
	if err := cli.Parse(&c, "diglett-server", "", []string{"--lease", "1m30s"}, &out, &errOut); err != nil || c.Lease.Seconds() != 90 {
		t.Fatalf("--lease 1m30s: %v, %v", c.Lease, err)
	}
}

// The low-port message for HTTPS, from the error a refused bind returns
// (the end-to-end test makes a real one on port 80).
func TestListenErrorHTTPS(t *testing.T) {
	refused := &net.OpError{Op: "listen", Net: "tcp", Err: &os.SyscallError{Syscall: "bind", Err: syscall.EACCES}}
	err := listenError("HTTPS visitors", ":443", refused)
	for _, want := range []string{
		"listen for HTTPS visitors on :443: permission denied",
		"(:443 is what --domain listens on by default)",
		"--https-addr (e.g. --https-addr :8443)",
		"setcap 'cap_net_bind_service=+ep' ",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
	// Another error keeps its cause.
	other := &net.OpError{Op: "listen", Net: "tcp", Err: errors.New("no such address")}
	if err := listenError("agents", "10.9.9.9:1", other); !errors.Is(err, other) || !strings.HasPrefix(err.Error(), "listen for agents: ") {
		t.Errorf("err = %v", err)
	}
}
