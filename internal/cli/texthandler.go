package cli

// A text log handler that writes the lines of the standard one, byte for
// byte, at a fraction of its cost for the lines the gateway writes most:
// the access log's, whose attributes are all strings, numbers and
// durations. Anything else (groups, values of other kinds, values that
// resolve themselves) goes to the standard handler, so no line differs.

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// textHandler is a slog.Handler with the output of slog.TextHandler
// (no ReplaceAttr, no source). Its lines and the standard handler's are
// each written with one Write under one mutex, so they never interleave.
type textHandler struct {
	level slog.Leveler
	out   *lockedWriter
	pre   []byte // the attributes added by WithAttrs, formatted
	fast  bool   // false once a group or an attribute of another kind was added

	// The standard handler with the same attributes and groups, for the
	// records this one does not write. A handler made by WithAttrs while
	// fast builds it only when first needed, from its parent's and the
	// attributes it added: a logger per session then costs no more than
	// with the standard handler alone.
	parent *textHandler
	added  []slog.Attr
	once   sync.Once
	slow   slog.Handler
}

var _ slog.Handler = (*textHandler)(nil)

// lockedWriter writes to w one call at a time.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// newTextHandler is a text handler writing to w from level up.
func newTextHandler(w io.Writer, level slog.Leveler) *textHandler {
	if level == nil {
		level = slog.LevelInfo
	}
	out := &lockedWriter{w: w}
	return &textHandler{
		level: level,
		out:   out,
		fast:  true,
		slow:  slog.NewTextHandler(out, &slog.HandlerOptions{Level: level}),
	}
}

// standard is the standard handler with h's attributes and groups.
func (h *textHandler) standard() slog.Handler {
	h.once.Do(func() {
		if h.slow == nil {
			h.slow = h.parent.standard().WithAttrs(h.added)
		}
	})
	return h.slow
}

func (h *textHandler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.level.Level()
}

// WithAttrs keeps as, which a handler owns.
func (h *textHandler) WithAttrs(as []slog.Attr) slog.Handler {
	if !h.fast || !allPlain(as) {
		return &textHandler{level: h.level, out: h.out, slow: h.standard().WithAttrs(as)}
	}
	pre := append([]byte(nil), h.pre...)
	for _, a := range as {
		if len(pre) > 0 {
			pre = append(pre, ' ')
		}
		pre = appendPlainAttr(pre, a)
	}
	return &textHandler{level: h.level, out: h.out, pre: pre, fast: true, parent: h, added: as}
}

// WithGroup leaves every line to the standard handler, which prefixes
// keys with the group's name (even an empty one).
func (h *textHandler) WithGroup(name string) slog.Handler {
	return &textHandler{level: h.level, out: h.out, slow: h.standard().WithGroup(name)}
}

// lineBufs holds the buffers lines are formatted in.
var lineBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// maxPooledLine bounds the buffers kept in lineBufs.
const maxPooledLine = 16 << 10

func (h *textHandler) Handle(ctx context.Context, r slog.Record) error {
	if !h.fast {
		return h.standard().Handle(ctx, r)
	}
	bp := lineBufs.Get().(*[]byte)
	b := (*bp)[:0]
	if !r.Time.IsZero() {
		b = append(b, "time="...)
		b = appendRFC3339Millis(b, r.Time.Round(0))
		b = append(b, ' ')
	}
	b = append(b, "level="...)
	b = appendTextString(b, r.Level.String())
	b = append(b, " msg="...)
	b = appendTextString(b, r.Message)
	if len(h.pre) > 0 {
		b = append(b, ' ')
		b = append(b, h.pre...)
	}
	plain := true
	r.Attrs(func(a slog.Attr) bool {
		if plain = plainKind(a.Value.Kind()); plain {
			b = append(b, ' ')
			b = appendPlainAttr(b, a)
		}
		return plain
	})
	var err error
	if plain {
		b = append(b, '\n')
		_, err = h.out.Write(b)
	} else {
		err = h.standard().Handle(ctx, r)
	}
	if cap(b) <= maxPooledLine {
		*bp = b
		lineBufs.Put(bp)
	}
	return err
}

// plainKind reports whether this handler formats values of kind k itself.
// The standard handler never elides an attribute of these kinds: only the
// zero Value, of kind Any, counts as empty.
func plainKind(k slog.Kind) bool {
	switch k {
	case slog.KindString, slog.KindInt64, slog.KindUint64, slog.KindFloat64,
		slog.KindBool, slog.KindDuration, slog.KindTime:
		return true
	}
	return false
}

func allPlain(as []slog.Attr) bool {
	for _, a := range as {
		if !plainKind(a.Value.Kind()) {
			return false
		}
	}
	return true
}

// appendPlainAttr appends key=value for an attribute of a plain kind.
func appendPlainAttr(b []byte, a slog.Attr) []byte {
	b = appendTextString(b, a.Key)
	b = append(b, '=')
	v := a.Value
	switch v.Kind() {
	case slog.KindString:
		return appendTextString(b, v.String())
	case slog.KindInt64:
		return strconv.AppendInt(b, v.Int64(), 10)
	case slog.KindUint64:
		return strconv.AppendUint(b, v.Uint64(), 10)
	case slog.KindFloat64:
		return strconv.AppendFloat(b, v.Float64(), 'g', -1, 64)
	case slog.KindBool:
		return strconv.AppendBool(b, v.Bool())
	case slog.KindDuration:
		return append(b, v.Duration().String()...)
	case slog.KindTime:
		return appendRFC3339Millis(b, v.Time())
	}
	panic("appendPlainAttr: kind " + v.Kind().String())
}

// appendTextString appends s, quoted if the text format needs it.
func appendTextString(b []byte, s string) []byte {
	if needsQuoting(s) {
		return strconv.AppendQuote(b, s)
	}
	return append(b, s...)
}

// needsQuoting is the text format's rule: quote an empty string, one with
// a space, '=', '"', an ASCII control character other than DEL, or a
// rune that is invalid, white space or not printable. A backslash alone
// does not.
func needsQuoting(s string) bool {
	if s == "" {
		return true
	}
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if quoteASCII[c] {
				return true
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError || unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return true
		}
		i += size
	}
	return false
}

// quoteASCII holds the ASCII bytes that need quoting.
var quoteASCII = func() (q [utf8.RuneSelf]bool) {
	for c := range q {
		q[c] = c < 0x20 || c == ' ' || c == '=' || c == '"'
	}
	return q
}()

// appendRFC3339Millis appends t as RFC 3339 with exactly three digits of
// milliseconds, truncated.
func appendRFC3339Millis(b []byte, t time.Time) []byte {
	const prefixLen = len("2006-01-02T15:04:05.000")
	n := len(b)
	// The nanosecond format drops trailing zeros: a tenth of a
	// millisecond added keeps four digits, of which the fourth is cut.
	t = t.Truncate(time.Millisecond).Add(time.Millisecond / 10)
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b[:n+prefixLen], b[n+prefixLen+1:]...)
}
