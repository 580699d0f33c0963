package servercli

// The gateway's access log.

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"

	"github.com/diglett/diglett/internal/cli"
)

// The words --access-log takes besides a file name.
const (
	accessLogOff    = "off"
	accessLogStdout = "stdout"
)

// openAccessLog gives the logger, for the log flags f, of the gateway's access log as --access-log
// asks for it: "" for the gateway's own log, "off" for none (nil),
// "stdout", or a file opened for appending (created 0640). The file is
// nil unless one was opened; Close and Reopen do nothing on nil.
func openAccessLog(f *cli.LogFlags, spec string, log *slog.Logger, stdout io.Writer) (*slog.Logger, *logFile, error) {
	switch spec {
	case "":
		return log, nil, nil
	case accessLogOff:
		return nil, nil, nil
	case accessLogStdout:
		return slog.New(f.Handler(stdout, slog.LevelInfo)), nil, nil
	}
	file, err := openLogFile(spec)
	if err != nil {
		return nil, nil, fmt.Errorf("--access-log: %w", err)
	}
	return slog.New(f.Handler(file, slog.LevelInfo)), file, nil
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
