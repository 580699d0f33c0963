// Package testutil holds what the project's tests share: a log buffer
// safe for the goroutines of a server under test, a self-signed gateway
// certificate, waiting for a condition, and the rule for the outside
// programs some tests run (required under CI=true, skipped with a message
// elsewhere).
package testutil

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/identity"
)

// Buffer is a bytes.Buffer safe for concurrent use: servers under test
// log into it from many goroutines while the test reads it.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String is everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Lines is everything written so far, a line each, without the last
// newline.
func (b *Buffer) Lines() []string {
	s := strings.TrimSpace(b.String())
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

var (
	certOnce sync.Once
	cert     tls.Certificate
	certErr  error
)

// Cert is a self-signed certificate for localhost and 127.0.0.1 with a
// gateway key, made once per test binary.
func Cert(t testing.TB) tls.Certificate {
	t.Helper()
	certOnce.Do(func() {
		dir, err := os.MkdirTemp("", "testutil-key-")
		if err != nil {
			certErr = err
			return
		}
		defer os.RemoveAll(dir)
		key, _, err := identity.LoadOrCreateKey(dir)
		if err != nil {
			certErr = err
			return
		}
		cert, certErr = identity.SelfSigned(key, "localhost", "127.0.0.1")
	})
	if certErr != nil {
		t.Fatalf("testutil: certificate: %v", certErr)
	}
	return cert
}

// ServerTLS is a TLS 1.3 server configuration with Cert.
func ServerTLS(t testing.TB) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{Cert(t)}, MinVersion: tls.VersionTLS13}
}

// Poll calls f until it returns nil or timeout has passed, and returns its
// last error. It is how a test waits for a condition.
func Poll(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// InCI reports whether the tests run under CI (CI=true), where nothing a
// test needs may be missing.
func InCI() bool { return os.Getenv("CI") == "true" }

// Unavailable ends t because something it needs is missing: a failure
// under CI, a skip with why elsewhere.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatal(msg)
	}
	t.Skip("skipping: " + msg)
}

// Program returns the path of the outside program name, which
// scripts/test-deps.sh installs; when it is missing, t fails under CI and
// is skipped elsewhere.
func Program(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		Unavailable(t, "%s is not installed (scripts/test-deps.sh installs it): %v", name, err)
	}
	return path
}

// FreePorts returns n loopback TCP ports that were free a moment ago, for
// an outside program to listen on: one may be taken before the program
// binds it, so start the program with StartRetrying.
func FreePorts(n int) ([]int, error) {
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}

// StartRetrying calls start up to three times, until it succeeds: an
// outside program given FreePorts may find one taken. It fails t with
// what and the last error.
func StartRetrying[T any](t testing.TB, what string, start func() (T, error)) T {
	t.Helper()
	var last error
	for range 3 {
		v, err := start()
		if err == nil {
			return v
		}
		last = err
	}
	t.Fatalf("%s: %v", what, last)
	var zero T
	return zero
}

// StartProcess starts cmd, a program a test runs beside it, tied to the
// test process's life (KillWithParent). exited receives how it ended,
// once; stop kills it and waits for that end, so it must not be called
// after exited was received from.
func StartProcess(cmd *exec.Cmd) (exited <-chan error, stop func(), err error) {
	KillWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	ch := make(chan error, 1)
	go func() { ch <- cmd.Wait() }()
	return ch, func() {
		cmd.Process.Kill()
		<-ch
	}, nil
}

// GoroutinesIn counts this process's goroutines whose stack contains fn,
// a function's qualified name or any part of it, and none of unless.
// Counting by what a goroutine runs, not by runtime.NumGoroutine, keeps a
// test's count free of goroutines that other code starts or ends at the
// same moment.
func GoroutinesIn(fn string, unless ...string) int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if !bytes.Contains(g, []byte(fn)) {
			continue
		}
		excluded := false
		for _, u := range unless {
			excluded = excluded || bytes.Contains(g, []byte(u))
		}
		if !excluded {
			count++
		}
	}
	return count
}

// LoopbackPair returns the two ends of a loopback TCP connection, the
// dialled one first, closed at the end of the test.
func LoopbackPair(t testing.TB) (dialled, accepted *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	d, err := net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var c net.Conn
	select {
	case c = <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("accept did not return")
	}
	if c == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { d.Close(); c.Close() })
	return d.(*net.TCPConn), c.(*net.TCPConn)
}

// RecordBufferCap is the capacity of a TLS connection's record buffer,
// which it keeps for the connection's life: a test's look at the standard
// library's own state, which fails rather than passes unseen if the
// field goes.
func RecordBufferCap(c *tls.Conn) (int, error) {
	f := reflect.ValueOf(c).Elem().FieldByName("rawInput")
	if !f.IsValid() {
		return 0, errors.New("crypto/tls.Conn has no rawInput any more: look again at what its record buffer is")
	}
	b := f.FieldByName("buf")
	if !b.IsValid() || b.Kind() != reflect.Slice {
		return 0, errors.New("crypto/tls.Conn's rawInput has no buf slice any more")
	}
	return b.Cap(), nil
}
