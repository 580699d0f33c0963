package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// wrkResult is what one wrk run reports.
type wrkResult struct {
	rps      float64 // requests/s
	p50, p99 float64 // milliseconds
	requests int64
	errors   int64 // socket errors (connect, read, write, timeout) and non-2xx/3xx responses
	output   string
}

var (
	wrkRPS     = regexp.MustCompile(`(?m)^Requests/sec:\s+([0-9.]+)`)
	wrkPct     = regexp.MustCompile(`(?m)^\s+(50|99)(?:\.0+)?%\s+([0-9.]+)(us|ms|s)\s*$`)
	wrkReqs    = regexp.MustCompile(`(?m)^\s+(\d+) requests in`)
	wrkSockErr = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx  = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

// runWrk runs wrk against url for secs seconds with conns connections (2
// threads) and the given extra headers.
func runWrk(ctx context.Context, secs, conns int, url string, headers ...string) (wrkResult, error) {
	args := []string{"-t2", fmt.Sprintf("-c%d", conns), fmt.Sprintf("-d%ds", secs), "--latency", "--timeout", "5s"}
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	args = append(args, url)
	out, err := runTool(ctx, time.Duration(secs)*time.Second+60*time.Second, "wrk", args...)
	r := wrkResult{output: out}
	if err != nil {
		return r, fmt.Errorf("wrk %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return parseWrk(out)
}

func parseWrk(out string) (wrkResult, error) {
	r := wrkResult{output: out}
	m := wrkRPS.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no Requests/sec in wrk's output:\n%s", out)
	}
	r.rps, _ = strconv.ParseFloat(m[1], 64)
	for _, m := range wrkPct.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		switch m[3] {
		case "us":
			v /= 1000
		case "s":
			v *= 1000
		}
		if m[1] == "50" {
			r.p50 = v
		} else {
			r.p99 = v
		}
	}
	if m := wrkReqs.FindStringSubmatch(out); m != nil {
		r.requests, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := wrkSockErr.FindStringSubmatch(out); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.ParseInt(s, 10, 64)
			r.errors += n
		}
	}
	if m := wrkNon2xx.FindStringSubmatch(out); m != nil {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		r.errors += n
	}
	return r, nil
}

// runIperf runs an iperf3 client against 127.0.0.1:port and returns the
// received rate in Gbit/s. A failed run (iperf3's server busy with the
// end of the previous test, say) is retried once.
func runIperf(ctx context.Context, secs, port, streams int, reverse bool) (float64, error) {
	args := []string{"-c", "127.0.0.1", "-p", strconv.Itoa(port), "-t", strconv.Itoa(secs), "-O", "1", "-J"}
	if streams > 1 {
		args = append(args, "-P", strconv.Itoa(streams))
	}
	if reverse {
		args = append(args, "-R")
	}
	var lastErr error
	for attempt := 0; attempt < 2; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(time.Second):
			}
		}
		out, err := runTool(ctx, time.Duration(secs)*time.Second+60*time.Second, "iperf3", args...)
		var res struct {
			Error string `json:"error"`
			End   struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if jerr := json.Unmarshal([]byte(out), &res); jerr != nil {
			lastErr = fmt.Errorf("iperf3 %s: %v; output: %.500s", strings.Join(args, " "), firstErr(err, jerr), out)
			continue
		}
		if res.Error != "" {
			lastErr = fmt.Errorf("iperf3 %s: %s", strings.Join(args, " "), res.Error)
			continue
		}
		if res.End.SumReceived.BitsPerSecond == 0 {
			lastErr = fmt.Errorf("iperf3 %s: no end.sum_received.bits_per_second", strings.Join(args, " "))
			continue
		}
		return res.End.SumReceived.BitsPerSecond / 1e9, nil
	}
	return 0, lastErr
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// runTool runs an outside program with a bound, killing its process group
// when the bound or ctx ends, and returns its stdout; the error carries
// its stderr.
func runTool(ctx context.Context, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var out, errb bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errb
	err := cmd.Run()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, ctx.Err())
		}
		err = fmt.Errorf("%w; stderr: %.1000s", err, errb.String())
	}
	return out.String(), err
}
