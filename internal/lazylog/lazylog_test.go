package lazylog

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"testing/slogtest"
)

// TestSameLines: lines through a lazy logger are byte for byte those of
// the same With calls on the handler itself, through groups and levels.
func TestSameLines(t *testing.T) {
	var want, got bytes.Buffer
	opts := &slog.HandlerOptions{Level: slog.LevelInfo, ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}}
	direct := slog.New(slog.NewTextHandler(&want, opts))
	base := slog.New(slog.NewTextHandler(&got, opts))
	for _, pair := range []struct{ d, l *slog.Logger }{
		{direct.With("agent", "1.2.3.4:5", "transport", "tcp"), With(base, "agent", "1.2.3.4:5", "transport", "tcp")},
		{direct.With("a", 1).With("b", 2).With(), With(base, "a", 1).With("b", 2).With()},
		{direct.With("a", 1).WithGroup("g").With("c", 3), With(base, "a", 1).WithGroup("g").With("c", 3)},
		{direct, With(base)},
		{direct.With("agent", "1.2.3.4:5", "n", 3), Func(base, func() []slog.Attr { return []slog.Attr{slog.String("agent", "1.2.3.4:5"), slog.Int("n", 3)} })},
		{direct.With("a", 1).With("b", 2), Func(base, func() []slog.Attr { return []slog.Attr{slog.Int("a", 1)} }).With("b", 2)},
		{direct.With("a", 1).WithGroup("g").With("c", 3), Func(base, func() []slog.Attr { return []slog.Attr{slog.Int("a", 1)} }).WithGroup("g").With("c", 3)},
		{direct, Func(base, func() []slog.Attr { return nil })},
	} {
		pair.d.Info("agent logged in", "n", 7)
		pair.l.Info("agent logged in", "n", 7)
		pair.d.Debug("hidden")
		pair.l.Debug("hidden")
		pair.d.Warn("w", slog.Group("x", "y", true))
		pair.l.Warn("w", slog.Group("x", "y", true))
	}
	if got.String() != want.String() {
		t.Fatalf("lazy lines differ:\n got %s\nwant %s", got.String(), want.String())
	}
	if !strings.Contains(got.String(), `g.c=3`) {
		t.Fatalf("the group test wrote no grouped attribute: %s", got.String())
	}
}

// TestSharedPrefix: two loggers made from one lazy logger do not see each
// other's attributes.
func TestSharedPrefix(t *testing.T) {
	var out bytes.Buffer
	base := With(slog.New(slog.NewTextHandler(&out, nil)), "a", 1)
	l1 := base.With("b", 2)
	l2 := base.With("c", 3)
	l1.Info("one")
	l2.Info("two")
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.HasSuffix(lines[0], "a=1 b=2") || !strings.HasSuffix(lines[1], "a=1 c=3") {
		t.Fatalf("lines: %q", lines)
	}
}

// TestHandler runs the standard library's conformance tests for handlers
// on a With logger's and a Func logger's.
func TestHandler(t *testing.T) {
	for name, lazy := range map[string]func(*slog.Logger) *slog.Logger{
		"With": func(l *slog.Logger) *slog.Logger { return With(l) },
		"Func": func(l *slog.Logger) *slog.Logger { return Func(l, func() []slog.Attr { return nil }) },
	} {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			newHandler := func(*testing.T) slog.Handler {
				buf.Reset()
				return lazy(slog.New(slog.NewJSONHandler(&buf, nil))).Handler()
			}
			result := func(t *testing.T) map[string]any {
				var m map[string]any
				if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
					t.Fatal(err)
				}
				return m
			}
			slogtest.Run(t, newHandler, result)
		})
	}
}

// TestFuncAsksEachLine: a Func logger's lines say what its function
// returns at the time, and derived loggers keep their own attributes.
func TestFuncAsksEachLine(t *testing.T) {
	var out bytes.Buffer
	state := "connecting"
	l := Func(slog.New(slog.NewTextHandler(&out, nil)), func() []slog.Attr { return []slog.Attr{slog.String("state", state)} })
	l.Info("one")
	state = "online"
	l.Info("two")
	l.With("b", 2).Info("three")
	l.Info("four")
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	want := []string{"state=connecting", "state=online", "state=online b=2", "state=online"}
	if len(lines) != len(want) {
		t.Fatalf("lines: %q", lines)
	}
	for i, w := range want {
		if !strings.HasSuffix(lines[i], w) {
			t.Errorf("line %d = %q, want it to end with %q", i, lines[i], w)
		}
	}
}
