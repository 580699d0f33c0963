//go:build unix

package servercli

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/internal/testutil"
)

// SIGHUP reopens the access log file, for log rotation: once the file has
// been renamed, the next visitor's line goes to a new file at the path
// given to --access-log, and none is lost or goes to the renamed file.
func TestAccessLogReopenedOnSIGHUP(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	dir := t.TempDir()
	file := filepath.Join(dir, "access.log")
	rotated := file + ".1"
	s := startServer(t, "--access-log", file, "--public-bind", "127.0.0.1")
	ln, err := s.agent(t, "", "web")
	if err != nil {
		t.Fatal(err)
	}
	go echo(ln)

	visit(t, ln)
	waitLines(t, file, 1)

	if err := os.Rename(file, rotated); err != nil {
		t.Fatal(err)
	}
	hup(t)
	s.waitLog(t, `msg="access log reopened" file=`+file+` trigger=SIGHUP`, 1)
	visit(t, ln)
	waitLines(t, file, 1)
	waitLines(t, rotated, 1)

	// A path that cannot be opened (a directory took its place) keeps
	// the file in use.
	if err := os.Rename(file, rotated); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(file, 0o700); err != nil {
		t.Fatal(err)
	}
	hup(t)
	s.waitLog(t, `msg="access log not reopened: writing on to the file open until now" file=`+file, 1)
	visit(t, ln)
	waitLines(t, rotated, 2)
}

// echo serves ln's visitors, each one's bytes sent back, until ln closes.
func echo(ln *diglett.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

// visit sends a visitor through ln's tunnel and waits for the echo.
func visit(t *testing.T, ln *diglett.Listener) {
	t.Helper()
	c, err := net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "hello"); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	if b, err := io.ReadAll(c); err != nil || string(b) != "hello" {
		t.Fatalf("visitor got %q, %v", b, err)
	}
}

// waitLines waits until file holds n access log lines of TCP visitors,
// and fails if it holds more.
func waitLines(t *testing.T, file string, n int) {
	t.Helper()
	err := testutil.Poll(10*time.Second, func() error {
		b, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		if got := strings.Count(string(b), `msg="tcp visitor"`); got != n {
			return fmt.Errorf("%s holds %d visitor lines, want %d:\n%s", file, got, n, b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
