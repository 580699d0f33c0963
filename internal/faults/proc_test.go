package faults

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// logBuf collects a program's output for matching while it runs. It keeps
// the first maxLog bytes and counts every line.
type logBuf struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines int
	lost  int
}

const maxLog = 8 << 20

func (b *logBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lines += bytes.Count(p, []byte{'\n'})
	keep := min(len(p), maxLog-b.buf.Len())
	b.buf.Write(p[:keep])
	b.lost += len(p) - keep
	return len(p), nil
}

func (b *logBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Lines is how many lines were written so far.
func (b *logBuf) Lines() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lines
}

// tail is the last n bytes of the output, for failure messages.
func (b *logBuf) tail(n int) string {
	s := b.String()
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}

// proc is one of the built programs, running.
type proc struct {
	name           string
	cmd            *exec.Cmd
	stdout, stderr *logBuf
	done           chan struct{} // closed when it has exited
	waitErr        error         // after done
	stopOnce       sync.Once
}

// childEnv is the environment of the programs: the test's, without
// anything that would change their flags (DIGLETT_*) or route their
// connections through a proxy.
func childEnv(home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(k) {
		case "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME":
			continue
		}
		if strings.HasPrefix(k, "DIGLETT_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+home, "XDG_CONFIG_HOME="+home+"/config", "XDG_DATA_HOME="+home+"/data")
}

// startProc runs program path with args until the case ends. On the way
// out it is stopped (SIGTERM, then SIGKILL), and its output is logged when
// the case failed.
func startProc(c *tc, name, path string, args ...string) *proc {
	c.Helper()
	p := &proc{name: name, stdout: &logBuf{}, stderr: &logBuf{}, done: make(chan struct{})}
	p.cmd = exec.Command(path, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	p.cmd.Env = childEnv(c.TempDir())
	if err := p.cmd.Start(); err != nil {
		c.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	c.Cleanup(func() {
		p.stop(5 * time.Second)
		if c.Failed() {
			c.Logf("%s %s\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), p.stdout.tail(4000), p.stderr.tail(8000))
		}
	})
	return p
}

// pid is the process id.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the program has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitExit waits up to d for the program to end and returns its exit code
// (-1 when a signal ended it); ok is false if it is still running.
func (p *proc) waitExit(d time.Duration) (code int, ok bool) {
	if p.exited() {
		return p.cmd.ProcessState.ExitCode(), true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode(), true
	case <-t.C:
		return 0, false
	}
}

func (p *proc) signal(sig os.Signal) {
	if !p.exited() {
		p.cmd.Process.Signal(sig)
	}
}

// stop ends the program: SIGTERM (after SIGCONT, in case it was stopped),
// then SIGKILL if it is still running after grace.
func (p *proc) stop(grace time.Duration) {
	p.stopOnce.Do(func() {
		p.signal(syscall.SIGCONT)
		p.signal(syscall.SIGTERM)
		if _, ok := p.waitExit(grace); !ok {
			p.signal(syscall.SIGKILL)
			<-p.done
		}
	})
}

// crashed returns the first line of a Go panic or fatal error in the
// program's output, or "".
func (p *proc) crashed() string {
	s := p.stderr.String()
	for _, mark := range []string{"panic:", "fatal error:"} {
		if i := strings.Index(s, mark); i >= 0 {
			line, _, _ := strings.Cut(s[i:], "\n")
			return line
		}
	}
	return ""
}

// errExited is returned by waitMatch when the program ended first.
var errExited = errors.New("program exited")

// waitMatch polls out until re matches, for at most d, and returns the
// submatches. It gives up early when the program exits without a match.
func (p *proc) waitMatch(out *logBuf, re *regexp.Regexp, d time.Duration) ([]string, error) {
	deadline := time.Now().Add(d)
	for {
		exited := p.exited()
		if m := re.FindStringSubmatch(out.String()); m != nil {
			return m, nil
		}
		if exited {
			return nil, fmt.Errorf("%s: %w (code %d) before printing %q", p.name, errExited, p.cmd.ProcessState.ExitCode(), re)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s printed no %q within %v", p.name, re, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mustMatch is waitMatch that fails the case.
func (p *proc) mustMatch(c *tc, out *logBuf, re *regexp.Regexp, d time.Duration) []string {
	c.Helper()
	m, err := p.waitMatch(out, re, d)
	if err != nil {
		c.Fatalf("%v; stderr: %s", err, oneLine(p.stderr.tail(600)))
	}
	return m
}

// oneLine folds s onto one line, for the report.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
