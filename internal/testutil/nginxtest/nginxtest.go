// Package nginxtest runs a real nginx (Debian's nginx package, which
// scripts/test-deps.sh installs) for a test: one process of its own (no
// master, no daemon), on a free loopback port, its configuration, logs,
// pid and temporary files in a directory of the test's, killed when the
// test ends. The system's nginx service and files are never used.
package nginxtest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

// Program is the program run, looked up in PATH or in /usr/sbin (which
// some PATHs lack).
const Program = "nginx"

// Bounds of the package's waits.
const (
	startTimeout = 20 * time.Second
	waitTimeout  = 10 * time.Second
)

// Server is a running nginx.
type Server struct {
	// Addr is 127.0.0.1:Port, where the test's configuration listens.
	Addr string
	Port int
	// Dir is nginx's prefix directory (-p): its configuration, its error
	// log (error.log), its pid file and its temporary files; logs the
	// test's configuration writes belong here too.
	Dir string
}

// Start runs nginx for t with the configuration conf returns, given the
// free loopback port it is to listen on (as 127.0.0.1:PORT) and nginx's
// directory, for the files it writes (access logs, say). conf is the
// main context after the package's own lines (the error log at info
// level, "events {}"): typically an http or stream block, which must set
// its own access_log (or "access_log off"): nginx's default one is a
// system file. Start returns once the port accepts connections; a port
// taken meanwhile is retried with another. When nginx is missing, t fails
// under CI and is skipped elsewhere.
func Start(t testing.TB, conf func(port int, dir string) string) *Server {
	t.Helper()
	bin := program(t)
	return testutil.StartRetrying(t, "nginxtest: nginx", func() (*Server, error) { return start(t, bin, conf) })
}

// program finds nginx in PATH or in /usr/sbin.
func program(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath(Program); err == nil {
		return p
	}
	p := filepath.Join("/usr/sbin", Program)
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		return p
	}
	return testutil.Program(t, Program)
}

func start(t testing.TB, bin string, conf func(port int, dir string) string) (*Server, error) {
	ports, err := testutil.FreePorts(1)
	if err != nil {
		return nil, err
	}
	// A directory of its own per attempt.
	dir, err := os.MkdirTemp(t.TempDir(), "nginx-")
	if err != nil {
		return nil, err
	}
	s := &Server{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])), Port: ports[0], Dir: dir}
	errorLog := filepath.Join(dir, "error.log")
	pidFile := filepath.Join(dir, "nginx.pid")
	text := fmt.Sprintf("error_log %s info;\nevents {\n\tworker_connections 256;\n}\n%s\n", errorLog, conf(s.Port, dir))
	confFile := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confFile, []byte(text), 0o600); err != nil {
		return nil, err
	}
	out := &testutil.Buffer{}
	// -e: the error log before the configuration is read (the built-in
	// one may be a system file); -g: in the foreground, one process,
	// which as root keeps root's rights over the test's directory.
	cmd := exec.Command(bin, "-p", dir, "-c", confFile, "-e", errorLog,
		"-g", fmt.Sprintf("daemon off; master_process off; pid %s;", pidFile))
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = out, out
	exited, stop, err := testutil.StartProcess(cmd)
	if err != nil {
		return nil, fmt.Errorf("start: %w", err)
	}
	// nginx writes its pid file once its ports are bound: only then is a
	// connection surely its own.
	deadline := time.Now().Add(startTimeout)
	for {
		err = s.ready(pidFile)
		if err == nil {
			break
		}
		select {
		case werr := <-exited:
			return nil, fmt.Errorf("exited (%v): %s%s", werr, out, s.File(t, "error.log"))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("not serving %s within %v: %v: %s%s", s.Addr, startTimeout, err, out, s.File(t, "error.log"))
		}
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("nginx output:\n%s\nerror.log:\n%s", out, s.File(t, "error.log"))
		}
	})
	return s, nil
}

// ready reports whether nginx has written its pid file and accepts
// connections on its port.
func (s *Server) ready(pidFile string) error {
	if _, err := os.Stat(pidFile); err != nil {
		return errors.New("no pid file yet")
	}
	c, err := net.DialTimeout("tcp", s.Addr, time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}

// File returns the text of name, a file in the server's directory (a log,
// say); "" when there is none yet.
func (s *Server) File(t testing.TB, name string) string {
	b, err := os.ReadFile(filepath.Join(s.Dir, name))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Errorf("nginxtest: %v", err)
	}
	return string(b)
}

// WaitFile waits until name, a file in the server's directory, holds
// want, and returns its text; t fails when it does not within a bound
// (nginx writes its logs as it goes, after answering).
func (s *Server) WaitFile(t testing.TB, name, want string) string {
	t.Helper()
	var text string
	err := testutil.Poll(waitTimeout, func() error {
		if text = s.File(t, name); !strings.Contains(text, want) {
			return fmt.Errorf("%s lacks %q", name, want)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("nginxtest: %v within %v:\n%s", err, waitTimeout, text)
	}
	return text
}
