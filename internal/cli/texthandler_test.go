package cli

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"strings"
	"sync"
	"testing"
	"time"
)

// bothLines logs the same record through the standard text handler and
// through textHandler, each shaped by shape, and gives both outputs.
func bothLines(level slog.Leveler, shape func(slog.Handler) slog.Handler, r slog.Record) (want, got string) {
	var std, fast bytes.Buffer
	hs := shape(slog.NewTextHandler(&std, &slog.HandlerOptions{Level: level}))
	hf := shape(newTextHandler(&fast, level))
	ctx := context.Background()
	if hs.Enabled(ctx, r.Level) {
		_ = hs.Handle(ctx, r.Clone())
	}
	if hf.Enabled(ctx, r.Level) {
		_ = hf.Handle(ctx, r.Clone())
	}
	return std.String(), fast.String()
}

func same(h slog.Handler) slog.Handler { return h }

func TestTextHandlerMatchesStandard(t *testing.T) {
	at := time.Date(2026, 12, 2, 15, 4, 5, 999_999_999, time.FixedZone("", 5*3600+1800))
	access := slog.NewRecord(at, slog.LevelInfo, "http request", 0)
	access.AddAttrs(slog.String("tunnel", "web"), slog.String("method", "GET"),
		slog.String("host", "web.gw.test"), slog.String("path", "/a b/\"c\"=\\"),
		slog.Int("status", 200), slog.Int64("bytes", 100),
		slog.Duration("duration", 345678*time.Nanosecond),
		slog.String("visitor", "127.0.0.1:43210"), slog.Uint64("session", 1))

	mixed := slog.NewRecord(time.Time{}, slog.LevelWarn+2, "", 0)
	mixed.AddAttrs(slog.Float64("f", math.Inf(-1)), slog.Float64("g", -0.0), slog.Bool("", false),
		slog.Int("", 0), slog.String("", ""), slog.Time("t", time.Time{}), slog.Time("u", at),
		slog.String("ctl", "a\x00b\tc\u00a0d\xff"), slog.String("uni", "héllo→"))

	other := slog.NewRecord(at, slog.LevelError, "failed", 0)
	other.AddAttrs(slog.String("a", "b"), slog.Any("err", errors.New("no route")),
		slog.Group("g", slog.Int("x", 1)), slog.Attr{})

	shapes := map[string]func(slog.Handler) slog.Handler{
		"plain": same,
		"with attrs": func(h slog.Handler) slog.Handler {
			return h.WithAttrs([]slog.Attr{slog.String("node", "gw 1"), slog.Int("n", 0)})
		},
		"with attrs twice": func(h slog.Handler) slog.Handler {
			return h.WithAttrs([]slog.Attr{slog.String("a", "1")}).WithAttrs([]slog.Attr{slog.Duration("b", time.Second)})
		},
		"with any attr":    func(h slog.Handler) slog.Handler { return h.WithAttrs([]slog.Attr{slog.Any("e", io.EOF)}) },
		"with group":       func(h slog.Handler) slog.Handler { return h.WithGroup("grp").WithAttrs([]slog.Attr{slog.Int("k", 2)}) },
		"with empty group": func(h slog.Handler) slog.Handler { return h.WithGroup("") },
		"no attrs added":   func(h slog.Handler) slog.Handler { return h.WithAttrs(nil) },
	}
	records := map[string]slog.Record{"access": access, "mixed": mixed, "other": other}
	for sn, shape := range shapes {
		for rn, r := range records {
			want, got := bothLines(slog.LevelDebug, shape, r)
			if want == "" || got != want {
				t.Errorf("%s, %s record:\nstandard %q\nours     %q", sn, rn, want, got)
			}
		}
	}
}

func TestTextHandlerLevel(t *testing.T) {
	var lv slog.LevelVar
	lv.Set(slog.LevelWarn)
	var buf bytes.Buffer
	log := slog.New(newTextHandler(&buf, &lv))
	log.Info("hidden")
	log.Warn("shown")
	lv.Set(slog.LevelDebug)
	log.Debug("now shown")
	if got := buf.String(); strings.Contains(got, "hidden") || !strings.Contains(got, "msg=shown") || !strings.Contains(got, `msg="now shown"`) {
		t.Errorf("lines %q", got)
	}
	if !newTextHandler(io.Discard, nil).Enabled(context.Background(), slog.LevelInfo) ||
		newTextHandler(io.Discard, nil).Enabled(context.Background(), slog.LevelDebug) {
		t.Error("a nil level is not Info")
	}
}

// TestTextHandlerLinesWhole: lines of both paths, from many goroutines,
// come out whole, one per Write.
func TestTextHandlerLinesWhole(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(newTextHandler(&buf, slog.LevelInfo)).With("node", "a")
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				if i%2 == 0 {
					log.Info("plain", "g", g, "i", i)
				} else {
					log.Info("other", "g", g, "err", io.EOF)
				}
			}
		})
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 8*200 {
		t.Fatalf("%d lines, want %d", len(lines), 8*200)
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "time=") || !strings.Contains(l, " node=a g=") {
			t.Fatalf("line cut or mixed: %q", l)
		}
	}
}

func FuzzTextHandler(f *testing.F) {
	f.Add("http request", "path", "/a b", int64(-3), uint64(7), 1.5, true, int64(1500), 0, int64(1_700_000_000_123_456_789), 0)
	f.Add("", "", "", int64(0), uint64(0), 0.0, false, int64(0), 4, int64(0), 1)
	f.Add("x=y", "k\"", "\xff\x00", int64(math.MinInt64), uint64(math.MaxUint64), math.NaN(), false, int64(math.MaxInt64), -5, int64(-1), 2)
	f.Fuzz(func(t *testing.T, msg, key, s string, i int64, u uint64, fl float64, b bool, d int64, lv int, ts int64, shape int) {
		at := time.Time{}
		if ts != 0 {
			at = time.Unix(0, ts).In(time.FixedZone("", int(ts%50_000)))
		}
		r := slog.NewRecord(at, slog.Level(lv%20), msg, 0)
		r.AddAttrs(slog.String(key, s), slog.Int64("i", i), slog.Uint64(s, u), slog.Float64("f", fl),
			slog.Bool(key, b), slog.Duration("d", time.Duration(d)), slog.Time("t", at))
		if shape&4 != 0 {
			// A value of another kind: the standard handler writes the
			// line, with the attributes of ours.
			r.AddAttrs(slog.Any("err", errors.New(s)))
		}
		shapes := []func(slog.Handler) slog.Handler{
			same,
			func(h slog.Handler) slog.Handler {
				return h.WithAttrs([]slog.Attr{slog.String(s, key), slog.Int64(key, i)})
			},
			func(h slog.Handler) slog.Handler { return h.WithGroup(key).WithAttrs([]slog.Attr{slog.Bool(s, b)}) },
		}
		k := shape % len(shapes)
		if k < 0 {
			k = -k
		}
		want, got := bothLines(slog.LevelDebug-10, shapes[k], r)
		if got != want {
			t.Fatalf("standard %q\nours     %q", want, got)
		}
	})
}

// BenchmarkAccessLine: the gateway's access log line, through the
// standard text handler and through ours.
func BenchmarkAccessLine(b *testing.B) {
	r := slog.NewRecord(time.Now(), slog.LevelInfo, "http request", 0)
	r.AddAttrs(slog.String("tunnel", "web"), slog.String("method", "GET"),
		slog.String("host", "web.gw.test"), slog.String("path", "/"),
		slog.Int("status", 200), slog.Int64("bytes", 100),
		slog.Duration("duration", 345678*time.Nanosecond),
		slog.String("visitor", "127.0.0.1:43210"), slog.Uint64("session", 1))
	for _, h := range []struct {
		name string
		h    slog.Handler
	}{{"standard", slog.NewTextHandler(io.Discard, nil)}, {"ours", newTextHandler(io.Discard, nil)}} {
		b.Run(h.name, func(b *testing.B) {
			for b.Loop() {
				_ = h.h.Handle(context.Background(), r)
			}
		})
	}
}

// BenchmarkLoggerWith: the loggers a session derives, each with its own
// attributes; ours should cost no more than the standard handler.
func BenchmarkLoggerWith(b *testing.B) {
	for _, c := range []struct {
		name string
		h    slog.Handler
	}{{"standard", slog.NewTextHandler(io.Discard, nil)}, {"ours", newTextHandler(io.Discard, nil)}} {
		b.Run(c.name, func(b *testing.B) {
			base := slog.New(c.h)
			b.ReportAllocs()
			for b.Loop() {
				l := base.With("agent", "127.0.0.1:54321", "transport", "tcp")
				l = l.With("identity", "alice").With("session", 12345)
				_ = l.With("tunnel", "web")
			}
		})
	}
}
