// Package lazylog gives long-lived objects that rarely log (an agent
// session, a tunnel) a logger whose attributes cost only what they hold.
// A handler's WithAttrs usually formats the attributes at once, so that
// each line is cheap: a few hundred bytes per logger, held for the
// object's life, which for thousands of idle sessions is more than the
// lines are worth. Here the attributes are kept as they are and applied
// to the handler only when a line is written. With Func, not even that:
// the attributes are asked of the object with each line.
package lazylog

import (
	"context"
	"log/slog"
	"slices"
)

// With returns a logger like l.With(args...), whose attributes (these and
// those added by further With calls) reach l's handler only with each
// line it writes.
func With(l *slog.Logger, args ...any) *slog.Logger {
	h := &handler{parent: l.Handler()}
	return slog.New(h).With(args...)
}

type handler struct {
	parent slog.Handler
	fn     func() []slog.Attr // Func's, asked with each line; nil for With's
	attrs  []slog.Attr        // after fn's
}

func (h *handler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.parent.Enabled(ctx, level)
}

func (h *handler) Handle(ctx context.Context, r slog.Record) error {
	return h.materialize().Handle(ctx, r)
}

func (h *handler) WithAttrs(as []slog.Attr) slog.Handler {
	if len(as) == 0 {
		return h
	}
	// Exactly as long as it needs: it is held for the logger's life.
	return &handler{parent: h.parent, fn: h.fn, attrs: slices.Concat(h.attrs, as)}
}

// WithGroup applies the attributes now: they stay outside the group.
func (h *handler) WithGroup(name string) slog.Handler {
	return h.materialize().WithGroup(name)
}

func (h *handler) materialize() slog.Handler {
	as := h.attrs
	if h.fn != nil {
		as = slices.Concat(h.fn(), h.attrs)
	}
	if len(as) == 0 {
		return h.parent
	}
	return h.parent.WithAttrs(as)
}

// Func returns a logger like l.With(attrs()...), whose attributes are
// asked of attrs with each line it writes (and each line of the loggers
// With and WithGroup derive from it): an object that rarely logs keeps a
// function instead of its attributes, and the lines say what it is at the
// time. attrs is called from any goroutine that logs.
func Func(l *slog.Logger, attrs func() []slog.Attr) *slog.Logger {
	return slog.New(&handler{parent: l.Handler(), fn: attrs})
}
