package dashboard

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"unicode/utf8"
)

// DefaultErrors is how many records an ErrorLog keeps by default, and
// MaxErrors the most it keeps.
const (
	DefaultErrors = 50
	MaxErrors     = 1000
)

// Bounds of one record kept: a string value is cut at maxValueRunes; a
// record still longer than maxRecordBytes is kept as its time, level and
// a note.
const (
	maxValueRunes  = 1024
	maxRecordBytes = 16 << 10
)

// ErrorLog keeps the last warnings and errors of a log, as the JSON
// records of the log's own lines (time, level, msg and attributes), for
// GET /api/v1/errors. It sees what the log writes and nothing more: keep
// secrets out of logs. Its methods are safe for concurrent use.
type ErrorLog struct {
	mu   sync.Mutex
	recs []json.RawMessage // recs[next] is the oldest once full
	next int
	full bool
}

// Interface guard.
var _ http.Handler = (*ErrorLog)(nil)

// NewErrorLog returns an ErrorLog keeping the last size records; 0 means
// DefaultErrors, and more than MaxErrors means MaxErrors.
func NewErrorLog(size int) *ErrorLog {
	if size <= 0 {
		size = DefaultErrors
	}
	size = min(size, MaxErrors)
	return &ErrorLog{recs: make([]json.RawMessage, size)}
}

// Handler returns a handler that passes every record to next, as next
// asks, and keeps those at slog.LevelWarn and above, whatever the level
// of next.
func (e *ErrorLog) Handler(next slog.Handler) slog.Handler {
	keep := slog.NewJSONHandler(recordWriter{e}, &slog.HandlerOptions{Level: slog.LevelWarn, ReplaceAttr: shorten})
	return &teeHandler{next: next, keep: &lazyHandler{root: keep, built: keep}}
}

// lazyHandler is root with attributes and groups added, applied only when
// a record reaches it: the gateway makes a logger for each session and
// tunnel, and most of them never log a warning, while the JSON handler
// formats what each one adds as soon as it is added. root's Enabled must
// not depend on what was added (a level).
type lazyHandler struct {
	root   slog.Handler
	parent *lazyHandler
	attrs  []slog.Attr // added to parent's, unless isGroup:
	group  string      // the group opened on parent's
	isGrp  bool
	once   sync.Once
	built  slog.Handler
}

func (h *lazyHandler) handler() slog.Handler {
	h.once.Do(func() {
		if h.built != nil {
			return
		}
		if p := h.parent.handler(); h.isGrp {
			h.built = p.WithGroup(h.group)
		} else {
			h.built = p.WithAttrs(h.attrs)
		}
	})
	return h.built
}

func (h *lazyHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.root.Enabled(ctx, l)
}

func (h *lazyHandler) Handle(ctx context.Context, r slog.Record) error {
	return h.handler().Handle(ctx, r)
}

// WithAttrs and WithGroup keep what they add for root's own to apply,
// which decides what an empty list or name means.
func (h *lazyHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &lazyHandler{root: h.root, parent: h, attrs: attrs}
}

func (h *lazyHandler) WithGroup(name string) slog.Handler {
	return &lazyHandler{root: h.root, parent: h, group: name, isGrp: true}
}

// shorten cuts long string values.
func shorten(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindString {
		if s := a.Value.String(); len(s) > maxValueRunes && utf8.RuneCountInString(s) > maxValueRunes {
			a.Value = slog.StringValue(string([]rune(s)[:maxValueRunes]) + "…")
		}
	}
	return a
}

// recordWriter takes the lines of the JSON handler, one record a Write.
type recordWriter struct{ e *ErrorLog }

func (w recordWriter) Write(p []byte) (int, error) {
	rec := bytes.TrimSpace(p)
	if len(rec) > maxRecordBytes {
		var head struct {
			Time  string `json:"time"`
			Level string `json:"level"`
		}
		json.Unmarshal(rec, &head)
		rec, _ = json.Marshal(map[string]string{"time": head.Time, "level": head.Level,
			"msg": "a log record too long to keep here: see the gateway's log"})
	}
	w.e.add(bytes.Clone(rec))
	return len(p), nil
}

func (e *ErrorLog) add(rec json.RawMessage) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.recs[e.next] = rec
	e.next++
	if e.next == len(e.recs) {
		e.next, e.full = 0, true
	}
}

// Recent returns the records kept, newest first.
func (e *ErrorLog) Recent() []json.RawMessage {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := e.next
	if e.full {
		n = len(e.recs)
	}
	out := make([]json.RawMessage, 0, n)
	for i := range n {
		out = append(out, e.recs[(e.next-1-i+len(e.recs))%len(e.recs)])
	}
	return out
}

// ServeHTTP serves GET /api/v1/errors: the records kept, newest first.
func (e *ErrorLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !getOnly(w, r) {
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"errors": e.Recent()})
}

// teeHandler passes records to next and keeps the warnings and errors.
type teeHandler struct {
	next, keep slog.Handler
}

var _ slog.Handler = (*teeHandler)(nil)

func (h *teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.next.Enabled(ctx, l) || h.keep.Enabled(ctx, l)
}

func (h *teeHandler) Handle(ctx context.Context, r slog.Record) error {
	// Two variables, not a slice: a slice handed to errors.Join would be
	// allocated for every line (every access line among them).
	var next, keep error
	if h.next.Enabled(ctx, r.Level) {
		next = h.next.Handle(ctx, r)
	}
	if h.keep.Enabled(ctx, r.Level) {
		keep = h.keep.Handle(ctx, r)
	}
	switch {
	case next == nil:
		return keep
	case keep == nil:
		return next
	}
	return errors.Join(next, keep)
}

func (h *teeHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &teeHandler{next: h.next.WithAttrs(attrs), keep: h.keep.WithAttrs(attrs)}
}

func (h *teeHandler) WithGroup(name string) slog.Handler {
	return &teeHandler{next: h.next.WithGroup(name), keep: h.keep.WithGroup(name)}
}
