package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// manyConnsN is the number of visitor connections held open at once.
const manyConnsN = 10000

// connsResult is what manyConns measured.
type connsResult struct {
	n                     int
	limits                []string // "name: max open files" of the processes involved
	streams               *heldResult
	visitors              []*heldResult // by Host, then via the TCP port
	before, after         int64         // gateway VmRSS, settled, without and with the idle streams
	agentBefore, agentAft int64
}

func (c *connsResult) perStream() float64 {
	if c.streams == nil || c.streams.held == 0 {
		return 0
	}
	return float64(c.after-c.before) / 1024 / float64(c.streams.held)
}

// heldResult is one batch of connections held open at once.
type heldResult struct {
	way              string // "by Host" or "via TCP port"
	held             int    // connections open after the first request
	errs1, errs2     int    // failed first (dial included) and second requests
	first            error
	open, second     time.Duration
	rssIdle, rssOpen int64 // gateway VmRSS before and with all held (peak of the samples)
	agentOpen        int64 // agent VmRSS with all held
}

type heldConn struct {
	c  net.Conn
	br *bufio.Reader
}

// get sends GET / with host and checks the backend's 100 bytes, all
// within 30 s.
func (h *heldConn) get(host string) error {
	h.c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintf(h.c, "GET / HTTP/1.1\r\nHost: %s\r\nUser-Agent: diglett-bench\r\n\r\n", host); err != nil {
		return err
	}
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		return err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 || n != bodySize {
		return fmt.Errorf("status %d, %d bytes", resp.StatusCode, n)
	}
	return nil
}

// parallel runs f(i) for i < n on workers goroutines, stopping early when
// ctx ends.
func parallel(ctx context.Context, n, workers int, f func(i int)) {
	work := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				f(i)
			}
		}()
	}
	for i := 0; i < n && ctx.Err() == nil; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
}

// openHeld opens n connections to addr, each sending one request with
// host and then staying open; failed ones are counted in r and left out.
func openHeld(ctx context.Context, addr, host string, n int, r *heldResult) []*heldConn {
	conns := make([]*heldConn, n)
	var mu sync.Mutex
	fail := func(err error) {
		mu.Lock()
		r.errs1++
		if r.first == nil {
			r.first = err
		}
		mu.Unlock()
	}
	start := time.Now()
	parallel(ctx, n, 200, func(i int) {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			fail(fmt.Errorf("dial: %w", err))
			return
		}
		h := &heldConn{c: c, br: bufio.NewReaderSize(c, 1024)}
		if err := h.get(host); err != nil {
			c.Close()
			fail(fmt.Errorf("first request: %w", err))
			return
		}
		conns[i] = h
	})
	r.open = time.Since(start)
	var held []*heldConn
	for _, h := range conns {
		if h != nil {
			held = append(held, h)
		}
	}
	r.held = len(held)
	r.errs1 += n - r.held - r.errs1 // requests never sent when ctx ended
	return held
}

func closeHeld(conns []*heldConn) {
	for _, h := range conns {
		h.c.Close()
	}
}

// settleRSS is pid's VmRSS after a few seconds of idleness (the last of
// five samples a second apart).
func settleRSS(ctx context.Context, pid int) int64 {
	var v int64
	for i := 0; i < 5 && ctx.Err() == nil; i++ {
		time.Sleep(time.Second)
		v = rss(pid)
	}
	return v
}

// maxOpenFiles is the soft "Max open files" of pid.
func maxOpenFiles(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "Max open files") {
			if f := strings.Fields(l); len(f) >= 4 {
				return f[3]
			}
		}
	}
	return "?"
}

// manyConns starts a fresh backend, gateway and tcp agent and, as
// selected, holds 10,000 idle streams through the tunnel's public TCP
// port to measure the gateway's memory per stream ("streams"), and
// 10,000 keep-alive visitors by Host and then through the public TCP
// port, each sending a second request while all are open ("visitors").
func (b *bench) manyConns(ctx context.Context) (*connsResult, error) {
	n := manyConnsN
	fmt.Fprintf(os.Stderr, "bench: %d connections held open through one agent\n", n)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	// Every process involved holds about n descriptors; children inherit
	// this process's limit (scripts/bench.sh raises it when it may).
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return nil, fmt.Errorf("raise RLIMIT_NOFILE: %w", err)
		}
	}
	if lim.Cur < uint64(n)+1000 {
		return nil, fmt.Errorf("RLIMIT_NOFILE is %d, %d connections need more (ulimit -n)", lim.Cur, n)
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	defer b.ps.stopAll()
	backend, err := b.startBackend(exe, "backend-conns")
	if err != nil {
		return nil, err
	}
	base := len(b.ps.list)
	c := &connsResult{n: n}
	// A fresh gateway and agent for every batch, so that none inherits
	// the heap another left behind.
	type tunnel struct {
		g, agent          *proc
		tcpAddr, hostName string
	}
	startTunnel := func(tag string) (*tunnel, error) {
		g, gwAddr, _, err := b.startGateway(ctx, "gateway-"+tag, b.o.portsMem, true)
		if err != nil {
			return nil, err
		}
		args := []string{"-g", gwAddr, "--transport", "tcp", "--known-gateways", filepath.Join(b.logDir, "known_gateways-"+tag), "-n", "conns", backend}
		agent, err := startProc(b.logDir, "agent-"+tag, filepath.Join(b.o.bin, "diglett"), args...)
		if err != nil {
			return nil, err
		}
		b.ps.add(agent)
		m, err := agent.waitLines(30*time.Second, regexp.MustCompile(`^conns: tcp://(\S+) -> `), regexp.MustCompile(`^conns: http://(\S+) -> `))
		if err != nil {
			return nil, err
		}
		t := &tunnel{g: g, agent: agent, tcpAddr: m[0][1]}
		t.hostName, _, _ = strings.Cut(m[1][1], ":")
		if err := checkHTTP(ctx, t.tcpAddr, t.tcpAddr); err != nil {
			return nil, err
		}
		if err := checkHTTP(ctx, b.gwHTTP, t.hostName); err != nil {
			return nil, err
		}
		if c.limits == nil {
			c.limits = []string{
				fmt.Sprintf("bench %d", lim.Cur),
				"gateway " + maxOpenFiles(g.pid()),
				"agent " + maxOpenFiles(agent.pid()),
			}
			fmt.Fprintf(os.Stderr, "  max open files: %s\n", strings.Join(c.limits, ", "))
		}
		return t, nil
	}
	// stop ends a batch's gateway and agent after noting what they logged.
	stop := func(t *tunnel) error {
		err := b.alive()
		b.scanProcLogs([]*proc{t.g, t.agent})
		t.agent.stop()
		t.g.stop()
		// Keep the backend only, for the next batch.
		b.ps.list = b.ps.list[:base]
		return err
	}

	if b.o.want("streams") {
		t, err := startTunnel("conns-streams")
		if err != nil {
			return c, err
		}
		g, agent, tcpAddr := t.g, t.agent, t.tcpAddr
		r := &heldResult{way: "via TCP port"}
		c.before = settleRSS(ctx, g.pid())
		c.agentBefore = rss(agent.pid())
		held := openHeld(ctx, tcpAddr, tcpAddr, n, r)
		c.after = settleRSS(ctx, g.pid())
		c.agentAft = rss(agent.pid())
		closeHeld(held)
		c.streams = r
		fmt.Fprintf(os.Stderr, "  idle streams: %d open in %v (%d failed: %v), gateway RSS %.1f MB -> %.1f MB: %.1f KB per stream; agent %.1f MB -> %.1f MB\n",
			r.held, r.open.Round(time.Millisecond), r.errs1, r.first, mb(c.before), mb(c.after), c.perStream(), mb(c.agentBefore), mb(c.agentAft))
		if err := stop(t); err != nil {
			return c, err
		}
	}
	if b.o.want("visitors") {
		for _, way := range []string{"by Host", "via TCP port"} {
			tag := "conns-host"
			if way != "by Host" {
				tag = "conns-tcp"
			}
			t, err := startTunnel(tag)
			if err != nil {
				return c, err
			}
			g, agent := t.g, t.agent
			w := struct{ way, addr, host string }{way, b.gwHTTP, t.hostName}
			if way != "by Host" {
				w.addr, w.host = t.tcpAddr, t.tcpAddr
			}
			r := &heldResult{way: w.way, rssIdle: settleRSS(ctx, g.pid())}
			held := openHeld(ctx, w.addr, w.host, n, r)
			time.Sleep(time.Second)
			r.rssOpen = rss(g.pid())
			r.agentOpen = rss(agent.pid())
			var mu sync.Mutex
			start := time.Now()
			parallel(ctx, len(held), 200, func(i int) {
				if err := held[i].get(w.host); err != nil {
					mu.Lock()
					r.errs2++
					if r.first == nil {
						r.first = fmt.Errorf("second request: %w", err)
					}
					mu.Unlock()
				}
			})
			r.second = time.Since(start)
			r.rssOpen = max(r.rssOpen, rss(g.pid()))
			r.agentOpen = max(r.agentOpen, rss(agent.pid()))
			closeHeld(held)
			c.visitors = append(c.visitors, r)
			fmt.Fprintf(os.Stderr, "  %d keep-alive visitors %s: %d open in %v, second request in %v; errors %d + %d (first: %v); gateway RSS %.1f MB -> %.1f MB, agent %.1f MB\n",
				n, w.way, r.held, r.open.Round(time.Millisecond), r.second.Round(time.Millisecond), r.errs1, r.errs2, r.first, mb(r.rssIdle), mb(r.rssOpen), mb(r.agentOpen))
			if err := stop(t); err != nil {
				return c, err
			}
		}
	}
	return c, ctx.Err()
}

func mb(v int64) float64 { return float64(v) / (1 << 20) }
