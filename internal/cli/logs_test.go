package cli

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"testing"
)

func TestLogLevels(t *testing.T) {
	for _, tc := range []struct {
		flags LogFlags
		want  slog.Level
	}{
		{LogFlags{LogLevel: "info"}, slog.LevelInfo},
		{LogFlags{LogLevel: "debug"}, slog.LevelDebug},
		{LogFlags{LogLevel: "warn"}, slog.LevelWarn},
		{LogFlags{LogLevel: "error"}, slog.LevelError},
		{LogFlags{LogLevel: "error", Debug: 1}, slog.LevelDebug}, // -d wins
	} {
		if got := tc.flags.Level(); got != tc.want {
			t.Errorf("%+v: level %v, want %v", tc.flags, got, tc.want)
		}
	}
}

// Both commands take the log flags, from the command line and from the
// environment (the gateway's: servercli's test of the same name).
func TestLogFlagsParsed(t *testing.T) {
	var c agentCmd
	var out bytes.Buffer
	if err := Parse(&c, "diglett", "", []string{"-g", "gw:20000", "-n", "web", "--log-format", "json", "--log-level", "warn", "9000"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	if c.LogFormat != "json" || c.Level() != slog.LevelWarn {
		t.Errorf("agent flags: %+v", c.LogFlags)
	}
}

func TestJSONLogs(t *testing.T) {
	var buf bytes.Buffer
	f := LogFlags{LogLevel: "info", LogFormat: "json"}
	f.Logger(&buf).Info("register domain 'web' -> '30001'", "identity", "alice")
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("%v: %s", err, buf.Bytes())
	}
	if line["msg"] != "register domain 'web' -> '30001'" || line["identity"] != "alice" || line["level"] != "INFO" {
		t.Errorf("JSON line %s", buf.Bytes())
	}
}
