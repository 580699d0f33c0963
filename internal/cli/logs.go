package cli

// The logging flags of both commands, and the gateway's access log.

import (
	"fmt"
	"io"
	"log/slog"
	"os"
)

// logFlags are the logging flags of diglett and diglett-server.
type logFlags struct {
	Debug     int    `short:"d" type:"counter" help:"Log at debug level: a shortcut for --log-level debug."`
	LogLevel  string `name:"log-level" default:"info" enum:"debug,info,warn,error" help:"Least severe level logged: debug, info, warn or error."`
	LogFormat string `name:"log-format" default:"text" enum:"text,json" help:"Log lines as text (key=value) or as JSON, one object a line."`
}

// level is the level the flags ask for; -d wins over --log-level.
func (f *logFlags) level() slog.Level {
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
func (f *logFlags) logger(w io.Writer) *slog.Logger {
	return slog.New(f.handler(w, f.level()))
}

// handler is a handler of the flags' format writing to w from level up.
func (f *logFlags) handler(w io.Writer, level slog.Leveler) slog.Handler {
	opts := &slog.HandlerOptions{Level: level}
	if f.LogFormat == "json" {
		return slog.NewJSONHandler(w, opts)
	}
	return slog.NewTextHandler(w, opts)
}

// The words --access-log takes besides a file name.
const (
	accessLogOff    = "off"
	accessLogStdout = "stdout"
)

// accessLog is the logger of the gateway's access log as --access-log
// asks for it: "" for the gateway's own log, "off" for none (nil),
// "stdout", or a file opened for appending (created 0640). The closer
// closes the file; it is never nil.
func (f *logFlags) accessLog(spec string, log *slog.Logger, stdout io.Writer) (*slog.Logger, io.Closer, error) {
	switch spec {
	case "":
		return log, noFile{}, nil
	case accessLogOff:
		return nil, noFile{}, nil
	case accessLogStdout:
		return slog.New(f.handler(stdout, slog.LevelInfo)), noFile{}, nil
	}
	file, err := os.OpenFile(spec, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, nil, fmt.Errorf("--access-log: %w", err)
	}
	return slog.New(f.handler(file, slog.LevelInfo)), file, nil
}

// noFile is the closer of an access log that opened no file.
type noFile struct{}

func (noFile) Close() error { return nil }
