package servercli

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diglett/diglett/internal/cli"
)

func TestAccessLogDestinations(t *testing.T) {
	var gw, stdout bytes.Buffer
	f := cli.LogFlags{LogLevel: "warn", LogFormat: "text"}
	log := f.Logger(&gw)

	al, c, err := openAccessLog(&f, "", log, &stdout)
	if err != nil || al != log {
		t.Fatalf("default access log: %v, %v (want the gateway's log)", al, err)
	}
	c.Close()

	al, c, err = openAccessLog(&f, "off", log, &stdout)
	if err != nil || al != nil {
		t.Fatalf("off: %v, %v", al, err)
	}
	c.Close()

	// Written at Info even when the gateway's log shows only warnings.
	al, c, err = openAccessLog(&f, "stdout", log, &stdout)
	if err != nil {
		t.Fatal(err)
	}
	al.Info("http request", "status", 200)
	c.Close()
	if !strings.Contains(stdout.String(), `msg="http request" status=200`) {
		t.Errorf("stdout: %q", stdout.String())
	}

	// A file is appended to, never truncated; a new one is 0640.
	file := filepath.Join(t.TempDir(), "access.log")
	for i := range 2 {
		al, c, err = openAccessLog(&f, file, log, &stdout)
		if err != nil {
			t.Fatal(err)
		}
		al.LogAttrs(context.Background(), slog.LevelInfo, "tcp visitor", slog.Int("n", i))
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(b), `msg="tcp visitor"`) != 2 {
		t.Errorf("file after two opens:\n%s", b)
	}
	fi, _ := os.Stat(file)
	if fi.Mode().Perm()&^0o640 != 0 {
		t.Errorf("file mode %v, want at most 0640", fi.Mode().Perm())
	}
	if _, _, err := openAccessLog(&f, filepath.Join(t.TempDir(), "no", "such", "dir"), log, &stdout); err == nil || !strings.HasPrefix(err.Error(), "--access-log: ") {
		t.Errorf("access log in a missing directory: %v", err)
	}
	if gw.Len() != 0 {
		t.Errorf("the gateway's log got %q", gw.String())
	}
}

// Both commands take the log flags, from the command line and from the
// environment (the agent's: cli's test of the same name).
func TestLogFlagsParsed(t *testing.T) {
	var out bytes.Buffer
	t.Setenv("DIGLETT_LOG_LEVEL", "debug")
	var s serverCmd
	if err := cli.Parse(&s, "diglett-server", "", nil, &out, &out); err != nil {
		t.Fatal(err)
	}
	if s.Level() != slog.LevelDebug || s.LogFormat != "text" || s.AccessLog != "" {
		t.Errorf("server flags: %+v, access log %q", s.LogFlags, s.AccessLog)
	}
	if err := cli.Parse(&s, "diglett-server", "", []string{"--log-format", "xml"}, &out, &out); err == nil {
		t.Error("--log-format xml accepted")
	}
}
