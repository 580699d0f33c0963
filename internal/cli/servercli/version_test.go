package servercli

import (
	"runtime"
	"strings"
	"testing"

	"github.com/diglett/diglett/internal/cli"
)

func TestVersionFlag(t *testing.T) {
	for _, program := range []string{"diglett", "diglett-server"} {
		out, err := run(program, "--version")
		if !cli.IsHelp(err) {
			t.Fatalf("%s --version: %v", program, err)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 4 || !strings.HasPrefix(lines[0], program+" ") || !strings.HasPrefix(lines[1], "commit: ") ||
			lines[2] != "go: "+runtime.Version() || lines[3] != "platform: "+runtime.GOOS+"/"+runtime.GOARCH {
			t.Errorf("%s --version printed:\n%s", program, out)
		}
	}
}
