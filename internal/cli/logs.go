package cli

// The logging flags of both commands, and the gateway's access log.

import (
	"io"
	"log/slog"
)

// LogFlags are the logging flags of diglett and diglett-server.
type LogFlags struct {
	Debug     int    `short:"d" type:"counter" help:"Log at debug level: a shortcut for --log-level debug."`
	LogLevel  string `name:"log-level" default:"info" enum:"debug,info,warn,error" help:"Least severe level logged: debug, info, warn or error."`
	LogFormat string `name:"log-format" default:"text" enum:"text,json" help:"Log lines as text (key=value) or as JSON, one object a line."`
}

// level is the level the flags ask for; -d wins over --log-level.
func (f *LogFlags) Level() slog.Level {
	if f.Debug > 0 {
		return slog.LevelDebug
	}
	switch f.LogLevel {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// logger logs to w at the level and in the format of the flags.
func (f *LogFlags) Logger(w io.Writer) *slog.Logger {
	return slog.New(f.Handler(w, f.Level()))
}

// handler is a handler of the flags' format writing to w from level up.
func (f *LogFlags) Handler(w io.Writer, level slog.Leveler) slog.Handler {
	opts := &slog.HandlerOptions{Level: level}
	if f.LogFormat == "json" {
		return slog.NewJSONHandler(w, opts)
	}
	return newTextHandler(w, level)
}
