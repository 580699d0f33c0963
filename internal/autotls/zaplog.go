package autotls

import (
	"context"
	"log/slog"
	"slices"

	"go.uber.org/zap/zapcore"
)

// slogCore is a zapcore.Core that hands certmagic's zap records to a slog
// logger, all at Debug level: what an operator needs at Info and above is
// the one line per certificate event that Manager.onEvent writes.
type slogCore struct {
	log    *slog.Logger
	fields []zapcore.Field // from With
}

func newSlogCore(log *slog.Logger) zapcore.Core {
	return &slogCore{log: log}
}

func (c *slogCore) Enabled(zapcore.Level) bool {
	return c.log.Enabled(context.Background(), slog.LevelDebug)
}

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	return &slogCore{log: c.log, fields: append(slices.Clip(c.fields), fields...)}
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fields {
		f.AddTo(enc)
	}
	attrs := make([]slog.Attr, 0, len(enc.Fields)+2)
	attrs = append(attrs, slog.String("certmagic", e.LoggerName), slog.String("certmagic_level", e.Level.String()))
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		attrs = append(attrs, slog.Any(k, enc.Fields[k]))
	}
	c.log.LogAttrs(context.Background(), slog.LevelDebug, e.Message, attrs...)
	return nil
}

func (c *slogCore) Sync() error { return nil }
