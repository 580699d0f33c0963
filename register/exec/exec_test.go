package exec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/testutil"
)

// script writes a shell script into dir and returns its path.
func script(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o700); err != nil {
		t.Fatal(err)
	}
	return p
}

func newHook(t *testing.T, c Config) (*Hook, *testutil.Buffer) {
	t.Helper()
	var logs testutil.Buffer
	c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	return h, &logs
}

// recorder is a script that appends, for each run, its arguments and the
// DIGLETT_ variables of its environment to the file out, then a line
// "--".
const recorder = `out="$1"; shift
for a in "$@"; do echo "arg=$a"; done >> "$out"
env | grep '^DIGLETT_' | sort >> "$out"
pwd | sed 's/^/pwd=/' >> "$out"
echo -- >> "$out"
echo "recorded $DIGLETT_EVENT"
`

// runs reads the runs a recorder wrote to out.
func runs(t *testing.T, out string) []string {
	t.Helper()
	data, err := os.ReadFile(out)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var rs []string
	for _, r := range strings.Split(string(data), "--\n") {
		if r != "" {
			rs = append(rs, r)
		}
	}
	return rs
}

// TestEvents: register, unregister and sweep run the command with the
// route in its environment, its arguments as given (no shell), in its
// directory; a route is unregistered once.
func TestEvents(t *testing.T) {
	dir := t.TempDir()
	work := t.TempDir()
	out := filepath.Join(dir, "runs")
	rec := script(t, dir, "record.sh", recorder)
	t.Setenv("DIGLETT_NAME", "stale")       // the gateway's own environment
	t.Setenv("HOOK_TEST_INHERITED", "kept") // is passed on, less our names
	h, logs := newHook(t, Config{Command: []string{rec, out, "$(id) ; x", "two words"}, Dir: work})

	route := gateway.Route{Name: "web", Port: 33605, Identity: "alice", Hosts: []string{"web.example.test", "www.example.org"}}
	c, err := h.Register(context.Background(), route)
	if err != nil {
		t.Fatal(err)
	}
	routeEnv := "DIGLETT_HOST=web.example.test\nDIGLETT_HOSTS=web.example.test www.example.org\nDIGLETT_IDENTITY=alice\nDIGLETT_NAME=web\nDIGLETT_PORT=33605\n"
	args := "arg=$(id) ; x\narg=two words\n"
	pwd := "pwd=" + work + "\n"
	want := []string{args + "DIGLETT_EVENT=register\n" + routeEnv + pwd}
	if got := runs(t, out); !equal(got, want) {
		t.Fatalf("register ran with\n%q\nwant\n%q", got, want)
	}
	if !strings.Contains(logs.String(), `msg="hook ran"`) || !strings.Contains(logs.String(), `output="recorded register\n"`) {
		t.Errorf("the run's output is not logged at Debug:\n%s", logs)
	}

	cc, ok := c.(gateway.ContextCloser)
	if !ok {
		t.Fatalf("Register returned a %T, want a gateway.ContextCloser", c)
	}
	if err := cc.CloseContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	want = append(want, args+"DIGLETT_EVENT=unregister\n"+routeEnv+pwd)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if got := runs(t, out); !equal(got, want) {
		t.Fatalf("after closing twice, runs are\n%q\nwant\n%q", got, want)
	}

	if err := h.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	want = append(want, args+"DIGLETT_EVENT=sweep\n"+pwd)
	if got := runs(t, out); !equal(got, want) {
		t.Fatalf("after sweep, runs are\n%q\nwant\n%q", got, want)
	}

	// No host: DIGLETT_HOST and DIGLETT_HOSTS are set, empty.
	if _, err := h.Register(context.Background(), gateway.Route{Name: "tcp", Port: 1, Identity: "bob"}); err != nil {
		t.Fatal(err)
	}
	want = append(want, args+"DIGLETT_EVENT=register\nDIGLETT_HOST=\nDIGLETT_HOSTS=\nDIGLETT_IDENTITY=bob\nDIGLETT_NAME=tcp\nDIGLETT_PORT=1\n"+pwd)
	if got := runs(t, out); !equal(got, want) {
		t.Fatalf("a route with no host ran with\n%q\nwant\n%q", got[len(got)-1], want[len(want)-1])
	}

	// The rest of the gateway's environment is passed on.
	envOut := filepath.Join(dir, "env")
	h2, _ := newHook(t, Config{Command: []string{"sh", "-c", `echo "$HOOK_TEST_INHERITED" > "$0"`, envOut}})
	if err := h2.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(envOut); string(got) != "kept\n" {
		t.Errorf("the hook's environment lacks the gateway's: got %q", got)
	}
}

func equal(a, b []string) bool {
	return fmt.Sprint(a) == fmt.Sprint(b) && len(a) == len(b)
}

// TestFailure: a non-zero exit is an error that gives the status and the
// first line of the output; a failed unregister can be tried again.
func TestFailure(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fail := script(t, dir, "fail.sh", `echo "cannot reach the proxy: \033[31mconnection refused" >&2
echo "second line"
exit 3
`)
	h, _ := newHook(t, Config{Command: []string{fail}})
	c, err := h.Register(context.Background(), gateway.Route{Name: "web"})
	if c != nil || err == nil {
		t.Fatalf("Register = %v, %v; want an error", c, err)
	}
	want := `hook register: exit status 3: cannot reach the proxy: \x1b[31mconnection refused`
	if err.Error() != want {
		t.Errorf("error %q\nwant  %q", err, want)
	}
	for range 2 {
		if err := h.run(context.Background(), EventUnregister, &gateway.Route{Name: "web"}); err == nil || !strings.HasPrefix(err.Error(), "hook unregister: exit status 3") {
			t.Errorf("unregister: %v, want exit status 3", err)
		}
	}
	if err := h.Sweep(context.Background()); err == nil || !strings.HasPrefix(err.Error(), "hook sweep: exit status 3") {
		t.Errorf("sweep: %v, want exit status 3", err)
	}

	missing, _ := newHook(t, Config{Command: []string{"diglett-no-such-hook"}})
	if err := missing.Sweep(context.Background()); err == nil || !strings.Contains(err.Error(), "executable file not found") {
		t.Errorf("missing program: %v", err)
	}
}

// TestFailsTwiceThenSucceeds: a hook's verdict is its exit status on
// each run; the gateway's retries (internal/e2e) rest on this.
func TestFailsTwiceThenSucceeds(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	flaky := script(t, dir, "flaky.sh", `n=$(cat "$0.count" 2>/dev/null || echo 0)
n=$((n+1)); echo $n > "$0.count"
[ $n -gt 2 ] || { echo "attempt $n fails"; exit 1; }
`)
	h, _ := newHook(t, Config{Command: []string{flaky}})
	for i := 1; i <= 2; i++ {
		_, err := h.Register(context.Background(), gateway.Route{Name: "web"})
		if want := fmt.Sprintf("hook register: exit status 1: attempt %d fails", i); err == nil || err.Error() != want {
			t.Fatalf("attempt %d: %v, want %s", i, err, want)
		}
	}
	if _, err := h.Register(context.Background(), gateway.Route{Name: "web"}); err != nil {
		t.Fatalf("attempt 3: %v", err)
	}
}

// TestTimeout: a hook that hangs is killed at its timeout with the
// process it started, and the error says so.
func TestTimeout(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	hang := script(t, dir, "hang.sh", `sleep 60 &
echo $! > "$1.tmp" && mv "$1.tmp" "$1"
echo "waiting for the proxy"
sleep 60
`)
	h, _ := newHook(t, Config{Command: []string{hang, pidFile}, Timeout: 500 * time.Millisecond})
	done := make(chan error, 1)
	go func() {
		_, err := h.Register(context.Background(), gateway.Route{Name: "web"})
		done <- err
	}()
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("a hook that hangs was not stopped at its timeout")
	}
	if want := "hook register: timed out after 500ms: waiting for the proxy"; err == nil || err.Error() != want {
		t.Fatalf("error %v, want %s", err, want)
	}
	data, rerr := os.ReadFile(pidFile)
	if rerr != nil {
		t.Fatalf("the hook did not record its child: %v", rerr)
	}
	pid, rerr := strconv.Atoi(strings.TrimSpace(string(data)))
	if rerr != nil {
		t.Fatal(rerr)
	}
	if err := testutil.Poll(10*time.Second, func() error {
		if alive(pid) {
			return fmt.Errorf("the hook's child %d still runs", pid)
		}
		return nil
	}); err != nil {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatal(err)
	}
}

// alive reports whether pid is a process that has not ended: one that
// exists and is not a zombie waiting for its parent.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	// pid (comm) STATE ...: comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

// TestStopped: a run whose context ends is killed, and the error says
// why.
func TestStopped(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	started := filepath.Join(dir, "started")
	hang := script(t, dir, "hang.sh", "touch \"$1\"\nsleep 60\n")
	h, _ := newHook(t, Config{Command: []string{hang, started}})
	ctx, cancel := context.WithCancelCause(context.Background())
	go func() {
		testutil.Poll(10*time.Second, func() error {
			_, err := os.Stat(started)
			return err
		})
		cancel(errors.New("gateway closing"))
	}()
	if err := h.Sweep(ctx); err == nil || err.Error() != "hook sweep: stopped: gateway closing" {
		t.Fatalf("error %v, want stopped: gateway closing", err)
	}
	if err := h.Sweep(ctx); err == nil || err.Error() != "hook sweep: not started: gateway closing" {
		t.Fatalf("error %v, want not started: gateway closing", err)
	}
}

// TestOutputBounded: only the end of a long output is kept.
func TestOutputBounded(t *testing.T) {
	t.Parallel()
	h, logs := newHook(t, Config{Command: []string{"sh", "-c", `i=0; while [ $i -lt 2000 ]; do echo "line $i of the output"; i=$((i+1)); done`}})
	if err := h.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := logs.String()
	if !strings.Contains(s, `line 1999 of the output\n"`) || strings.Contains(s, "line 1 of") {
		t.Errorf("the log does not keep the end of the output only:\n%.300s", s)
	}
	if len(s) > 2*MaxOutput {
		t.Errorf("logged %d bytes for one run, want about %d", len(s), MaxOutput)
	}

	var tl tail
	tl.Write(bytes.Repeat([]byte("a"), MaxOutput-1))
	tl.Write([]byte("bc"))
	if got := tl.String(); len(tl.buf) != MaxOutput || !strings.HasPrefix(got, "…a") || !strings.HasSuffix(got, "abc") {
		t.Errorf("tail kept %d bytes ending %q", len(tl.buf), got[len(got)-5:])
	}
	tl.Write(bytes.Repeat([]byte("z"), 3*MaxOutput))
	if string(tl.buf) != strings.Repeat("z", MaxOutput) {
		t.Errorf("a write beyond the bound is not cut to its end")
	}
}

// TestConfig: what New refuses.
func TestConfig(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	for _, tc := range []struct {
		c    Config
		want string
	}{
		{Config{}, "command: give the program"},
		{Config{Command: []string{""}}, "command: give the program"},
		{Config{Command: []string{"true"}, Timeout: -time.Second}, "timeout cannot be negative"},
		{Config{Command: []string{"true"}, Dir: file}, "not a directory"},
		{Config{Command: []string{"true"}, Dir: file + ".missing"}, "no such file"},
	} {
		if _, err := New(tc.c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want %q", tc.c, err, tc.want)
		}
	}
	h, err := New(Config{Command: []string{"/usr/lib/diglett/hook"}})
	if err != nil || h.timeout != DefaultTimeout || h.String() != "exec hook" {
		t.Errorf("New = %v, %v", h, err)
	}
}
