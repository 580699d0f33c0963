package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLogLevels(t *testing.T) {
	for _, tc := range []struct {
		flags logFlags
		want  slog.Level
	}{
		{logFlags{LogLevel: "info"}, slog.LevelInfo},
		{logFlags{LogLevel: "debug"}, slog.LevelDebug},
		{logFlags{LogLevel: "warn"}, slog.LevelWarn},
		{logFlags{LogLevel: "error"}, slog.LevelError},
		{logFlags{LogLevel: "error", Debug: 1}, slog.LevelDebug}, // -d wins
	} {
		if got := tc.flags.level(); got != tc.want {
			t.Errorf("%+v: level %v, want %v", tc.flags, got, tc.want)
		}
	}
}

// Both commands take the log flags, from the command line and from the
// environment.
func TestLogFlagsParsed(t *testing.T) {
	var c agentCmd
	var out bytes.Buffer
	if err := parse(&c, "diglett", "", []string{"-g", "gw:20000", "-n", "web", "--log-format", "json", "--log-level", "warn", "9000"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	if c.LogFormat != "json" || c.level() != slog.LevelWarn {
		t.Errorf("agent flags: %+v", c.logFlags)
	}
	t.Setenv("DIGLETT_LOG_LEVEL", "debug")
	var s serverCmd
	if err := parse(&s, "diglett-server", "", nil, &out, &out); err != nil {
		t.Fatal(err)
	}
	if s.level() != slog.LevelDebug || s.LogFormat != "text" || s.AccessLog != "" {
		t.Errorf("server flags: %+v, access log %q", s.logFlags, s.AccessLog)
	}
	if err := parse(&s, "diglett-server", "", []string{"--log-format", "xml"}, &out, &out); err == nil {
		t.Error("--log-format xml accepted")
	}
}

func TestJSONLogs(t *testing.T) {
	var buf bytes.Buffer
	f := logFlags{LogLevel: "info", LogFormat: "json"}
	f.logger(&buf).Info("register domain 'web' -> '30001'", "identity", "alice")
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("%v: %s", err, buf.Bytes())
	}
	if line["msg"] != "register domain 'web' -> '30001'" || line["identity"] != "alice" || line["level"] != "INFO" {
		t.Errorf("JSON line %s", buf.Bytes())
	}
}

func TestAccessLogDestinations(t *testing.T) {
	var gw, stdout bytes.Buffer
	f := logFlags{LogLevel: "warn", LogFormat: "text"}
	log := f.logger(&gw)

	al, c, err := f.accessLog("", log, &stdout)
	if err != nil || al != log {
		t.Fatalf("default access log: %v, %v (want the gateway's log)", al, err)
	}
	c.Close()

	al, c, err = f.accessLog("off", log, &stdout)
	if err != nil || al != nil {
		t.Fatalf("off: %v, %v", al, err)
	}
	c.Close()

	// Written at Info even when the gateway's log shows only warnings.
	al, c, err = f.accessLog("stdout", log, &stdout)
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
		al, c, err = f.accessLog(file, log, &stdout)
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
	if _, _, err := f.accessLog(filepath.Join(t.TempDir(), "no", "such", "dir"), log, &stdout); err == nil || !strings.HasPrefix(err.Error(), "--access-log: ") {
		t.Errorf("access log in a missing directory: %v", err)
	}
	if gw.Len() != 0 {
		t.Errorf("the gateway's log got %q", gw.String())
	}
}
