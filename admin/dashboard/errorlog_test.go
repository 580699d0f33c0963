package dashboard

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

type record struct {
	Level string `json:"level"`
	Msg   string `json:"msg"`
	Err   string `json:"err"`
	Conn  struct {
		Tunnel string `json:"tunnel"`
	} `json:"conn"`
}

func decode(t *testing.T, raws []json.RawMessage) []record {
	t.Helper()
	out := make([]record, len(raws))
	for i, raw := range raws {
		if err := json.Unmarshal(raw, &out[i]); err != nil {
			t.Fatalf("record %s: %v", raw, err)
		}
	}
	return out
}

// The log keeps going to its handler, at its level; warnings and errors
// are kept too, even when that level is above them, newest first.
func TestErrorLogTee(t *testing.T) {
	e := NewErrorLog(3)
	var out bytes.Buffer
	log := slog.New(e.Handler(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelError})))
	log.Info("hello")
	log.Warn("agent gone", "err", errors.New("eof"))
	log.WithGroup("conn").With("tunnel", "web").Error("relay failed")
	if got := out.String(); strings.Contains(got, "hello") || strings.Contains(got, "agent gone") || !strings.Contains(got, "relay failed") {
		t.Errorf("the log's own output: %q", got)
	}
	recs := decode(t, e.Recent())
	if len(recs) != 2 || recs[0].Msg != "relay failed" || recs[0].Level != "ERROR" || recs[0].Conn.Tunnel != "web" ||
		recs[1].Msg != "agent gone" || recs[1].Err != "eof" {
		t.Fatalf("kept: %+v", recs)
	}
	// The ring keeps the last 3.
	for _, m := range []string{"w1", "w2", "w3", "w4"} {
		log.Warn(m)
	}
	recs = decode(t, e.Recent())
	if len(recs) != 3 || recs[0].Msg != "w4" || recs[2].Msg != "w2" {
		t.Fatalf("kept after 6 records: %+v", recs)
	}
}

// Long values are cut and huge records summed up: a record kept is
// bounded.
func TestErrorLogBounded(t *testing.T) {
	e := NewErrorLog(0)
	log := slog.New(e.Handler(slog.DiscardHandler))
	log.Warn("long", "err", strings.Repeat("x", 100000))
	args := make([]any, 0, 200)
	for i := range 100 {
		args = append(args, "k"+strings.Repeat("k", i), strings.Repeat("v", 1000))
	}
	log.Error("many", args...)
	raws := e.Recent()
	for _, raw := range raws {
		if len(raw) > maxRecordBytes {
			t.Errorf("a record of %d bytes kept", len(raw))
		}
	}
	recs := decode(t, raws)
	if len(recs) != 2 || !strings.HasPrefix(recs[0].Msg, "a log record too long") || recs[0].Level != "ERROR" {
		t.Errorf("huge record kept as %+v", recs[0])
	}
	if n := len([]rune(recs[1].Err)); n != maxValueRunes+1 {
		t.Errorf("long value kept with %d runes", n)
	}
	if NewErrorLog(MaxErrors+5).recs == nil || len(NewErrorLog(MaxErrors+5).recs) != MaxErrors {
		t.Error("size not bounded by MaxErrors")
	}
}

func TestErrorLogHandler(t *testing.T) {
	e := NewErrorLog(0)
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/errors", nil))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"errors": []`) {
		t.Fatalf("empty: %d %s", rec.Code, rec.Body)
	}
	log := slog.New(e.Handler(slog.DiscardHandler))
	log.Warn("one")
	rec = httptest.NewRecorder()
	e.ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/errors", nil))
	var body struct{ Errors []record }
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || len(body.Errors) != 1 || body.Errors[0].Msg != "one" {
		t.Fatalf("%v: %s", err, rec.Body)
	}
}

func TestErrorLogConcurrent(t *testing.T) {
	e := NewErrorLog(10)
	log := slog.New(e.Handler(slog.DiscardHandler))
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 200 {
				log.Warn("w", "n", 1)
				e.Recent()
			}
		})
	}
	wg.Wait()
	if got := len(e.Recent()); got != 10 {
		t.Fatalf("%d kept, want 10", got)
	}
}

// The kept records are those the JSON handler writes itself, through any
// chain of attributes and groups, though the chain is applied only when a
// record comes; a logger made with With costs one small value until then.
func TestLazyHandlerSameRecords(t *testing.T) {
	var direct, lazy bytes.Buffer
	opts := &slog.HandlerOptions{Level: slog.LevelWarn}
	d := slog.Handler(slog.NewJSONHandler(&direct, opts))
	root := slog.NewJSONHandler(&lazy, opts)
	l := slog.Handler(&lazyHandler{root: root, built: root})
	steps := []func(slog.Handler) slog.Handler{
		func(h slog.Handler) slog.Handler {
			return h.WithAttrs([]slog.Attr{slog.String("agent", "192.0.2.1:4000")})
		},
		func(h slog.Handler) slog.Handler { return h.WithAttrs(nil) },
		func(h slog.Handler) slog.Handler { return h.WithGroup("conn") },
		func(h slog.Handler) slog.Handler { return h.WithGroup("") },
		func(h slog.Handler) slog.Handler {
			return h.WithAttrs([]slog.Attr{slog.Int("n", 3), slog.Any("e", errors.New("x"))})
		},
	}
	at := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	for i, step := range steps {
		d, l = step(d), step(l)
		for _, level := range []slog.Level{slog.LevelInfo, slog.LevelWarn, slog.LevelError} {
			ctx := context.Background()
			if d.Enabled(ctx, level) != l.Enabled(ctx, level) {
				t.Fatalf("step %d, %v: Enabled differs", i, level)
			}
			if !d.Enabled(ctx, level) {
				continue
			}
			r := slog.NewRecord(at, level, "m", 0)
			r.AddAttrs(slog.String("k", "v"))
			d.Handle(ctx, r)
			l.Handle(ctx, r)
		}
	}
	if direct.String() != lazy.String() || direct.Len() == 0 {
		t.Fatalf("the JSON handler wrote\n%s\nthrough the lazy chain\n%s", direct.String(), lazy.String())
	}
	// A session's loggers: three With calls, no record. Each call makes
	// its attribute slice and a handler; the JSON handler also formats.
	with3 := func(h slog.Handler) float64 {
		return testing.AllocsPerRun(100, func() {
			x := h.WithAttrs([]slog.Attr{slog.String("agent", "a")})
			x = x.WithAttrs([]slog.Attr{slog.String("identity", "b")})
			x.WithAttrs([]slog.Attr{slog.Uint64("session", 7)})
		})
	}
	lazyAllocs, jsonAllocs := with3(&lazyHandler{root: root, built: root}), with3(root)
	if lazyAllocs > 6 || lazyAllocs >= jsonAllocs {
		t.Errorf("three With calls: %v allocations through the lazy handler, %v through the JSON handler", lazyAllocs, jsonAllocs)
	}
	t.Logf("three With calls: %v allocations through the lazy handler, %v through the JSON handler", lazyAllocs, jsonAllocs)
}
