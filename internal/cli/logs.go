package cli

// The logging flags of both commands, and the gateway's access log.

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
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
// "stdout", or a file opened for appending (created 0640). The file is
// nil unless one was opened; Close and Reopen do nothing on nil.
func (f *logFlags) accessLog(spec string, log *slog.Logger, stdout io.Writer) (*slog.Logger, *logFile, error) {
	switch spec {
	case "":
		return log, nil, nil
	case accessLogOff:
		return nil, nil, nil
	case accessLogStdout:
		return slog.New(f.handler(stdout, slog.LevelInfo)), nil, nil
	}
	file, err := openLogFile(spec)
	if err != nil {
		return nil, nil, fmt.Errorf("--access-log: %w", err)
	}
	return slog.New(f.handler(file, slog.LevelInfo)), file, nil
}

// logFile is a log file that can be reopened at its path, for log
// rotation: once the file has been renamed, Reopen makes the lines that
// follow go to a new file at the path. Its methods are safe for
// concurrent use.
type logFile struct {
	path string

	mu sync.Mutex // held across each write, so no line is cut by Reopen
	f  *os.File
}

var _ io.WriteCloser = (*logFile)(nil)

// openLogFile opens path for appending, creating it 0640.
func openLogFile(path string) (*logFile, error) {
	f, err := openAppend(path)
	if err != nil {
		return nil, err
	}
	return &logFile{path: path, f: f}, nil
}

// openAppend opens path for appending, creating it 0640.
func openAppend(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
}

// Write writes p to the file open now.
func (l *logFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Write(p)
}

// Reopen opens the file at its path again, creating it if it is gone, and
// writes there from now on; the file open until then is closed. If the
// path cannot be opened, the file open until then stays in use, and the
// error says why.
func (l *logFile) Reopen() error {
	if l == nil {
		return nil
	}
	f, err := openAppend(l.path)
	if err != nil {
		return fmt.Errorf("reopen: %w", err)
	}
	l.mu.Lock()
	old := l.f
	l.f = f
	l.mu.Unlock()
	return old.Close()
}

// reopener is what SIGHUP calls (see serveReloads): Reopen, logged to
// log. Nil when l is.
func (l *logFile) reopener(log *slog.Logger) func() {
	if l == nil {
		return nil
	}
	return func() {
		if err := l.Reopen(); err != nil {
			log.Error("access log not reopened: writing on to the file open until now", "file", l.path, "err", err)
			return
		}
		log.Info("access log reopened", "file", l.path, "trigger", "SIGHUP")
	}
}

// Close closes the file.
func (l *logFile) Close() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Close()
}
