package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a program started by the bench: its stdout lines are kept (and
// copied to NAME.out), its stderr goes to NAME.log, and it is killed with
// its process group by stop, or when the bench dies (parent-death signal).
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error

	mu    sync.Mutex
	lines []string
}

func startProc(logDir, name, bin string, args ...string) (*proc, error) {
	p := &proc{name: name, done: make(chan struct{}), logPath: filepath.Join(logDir, name+".log")}
	p.cmd = exec.Command(bin, args...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr, err := os.Create(p.logPath)
	if err != nil {
		return nil, err
	}
	p.cmd.Stderr = stderr
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		stderr.Close()
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		stderr.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	outFile, _ := os.Create(filepath.Join(logDir, name+".out"))
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.lines = append(p.lines, line)
			p.mu.Unlock()
			if outFile != nil {
				fmt.Fprintln(outFile, line)
			}
		}
		p.err = p.cmd.Wait()
		stderr.Close()
		if outFile != nil {
			outFile.Close()
		}
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// waitLines waits until every pattern matches a line of stdout and returns
// the submatches of each, or fails when the process exits or after timeout.
func (p *proc) waitLines(timeout time.Duration, patterns ...*regexp.Regexp) ([][]string, error) {
	deadline := time.Now().Add(timeout)
	for {
		p.mu.Lock()
		found := make([][]string, len(patterns))
		n := 0
		for i, re := range patterns {
			for _, l := range p.lines {
				if m := re.FindStringSubmatch(l); m != nil {
					found[i] = m
					n++
					break
				}
			}
		}
		p.mu.Unlock()
		if n == len(patterns) {
			return found, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("%s exited (%v) before printing %v; its log:\n%s", p.name, p.err, patterns, p.logTail())
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s did not print %v within %v; its log:\n%s", p.name, patterns, timeout, p.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *proc) logTail() string {
	b, _ := os.ReadFile(p.logPath)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// alive reports an error when the process has exited.
func (p *proc) alive() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited: %v; its log:\n%s", p.name, p.err, p.logTail())
	default:
		return nil
	}
}

// stop ends the process group: SIGTERM, then SIGKILL after 5 s.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	syscall.Kill(-p.pid(), syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-p.pid(), syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
		}
	}
}

// procs stops everything it holds, newest first.
type procs struct{ list []*proc }

func (ps *procs) add(p *proc) { ps.list = append(ps.list, p) }

func (ps *procs) stopAll() {
	for i := len(ps.list) - 1; i >= 0; i-- {
		ps.list[i].stop()
	}
	ps.list = nil
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitTCP waits until addr accepts connections.
func waitTCP(ctx context.Context, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not accept connections after %v: %w", addr, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// procStatus reads a "Vm...:   N kB" field of /proc/PID/status, in bytes.
func procStatus(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			f := strings.Fields(v)
			if len(f) == 0 {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

func rss(pid int) int64 {
	v, _ := procStatus(pid, "VmRSS")
	return v
}

// cpuTime is the user+system CPU time used so far by pid.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / ticks
}

// memSample is resident memory from /proc/PID/status, in bytes: VmRSS
// and its two main parts, RssAnon (heap, stacks: what the process
// allocated) and RssFile (mapped file pages, mostly the binary's own code
// and data, shared with the page cache).
type memSample struct{ vm, anon, file int64 }

// memOf reads pid's memSample; a field it cannot read counts as 0.
func memOf(pid int) memSample {
	var m memSample
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		var dst *int64
		switch k {
		case "VmRSS":
			dst = &m.vm
		case "RssAnon":
			dst = &m.anon
		case "RssFile":
			dst = &m.file
		default:
			continue
		}
		if f := strings.Fields(v); len(f) > 0 {
			if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				*dst = kb * 1024
			}
		}
	}
	return m
}

// peakRSS samples the summed memory of pids every 100 ms until stop is
// called, and returns the sample of the peak summed VmRSS, with its RssFile,
// and the peak summed RssAnon.
func peakRSS(pids ...int) (stop func() memSample) {
	var peak memSample
	quit := make(chan struct{})
	done := make(chan struct{})
	sample := func() {
		var sum memSample
		for _, p := range pids {
			m := memOf(p)
			sum.vm += m.vm
			sum.anon += m.anon
			sum.file += m.file
		}
		if sum.vm > peak.vm {
			peak.vm, peak.file = sum.vm, sum.file
		}
		peak.anon = max(peak.anon, sum.anon)
	}
	go func() {
		defer close(done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			sample()
			select {
			case <-quit:
				return
			case <-t.C:
			}
		}
	}()
	return func() memSample {
		close(quit)
		<-done
		sample()
		return peak
	}
}

// lookTool fails with a clear message when a program the bench needs is
// missing.
func lookTool(name, pkg string) error {
	if _, err := exec.LookPath(name); err != nil {
		return fmt.Errorf("%s is not installed (Debian package %q; scripts/bench.sh installs it): %w", name, pkg, err)
	}
	return nil
}

var errSkipped = errors.New("skipped")
