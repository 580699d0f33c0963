//go:build soak

package faults

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The soak test: SOAK_DURATION (default 1h) of mixed traffic through
// agents over every transport while agents and the gateway are restarted
// at random. `make soak` runs it; it is not part of `make test`.
//
// It fails on an error the restarts do not explain, on a restart after
// which a tunnel does not serve again within a minute, on a crash, and on
// growth: the median of the last third of the samples (after warm-up)
// above soakGrowth of the median of the first third.

// soakGrowth bounds growth across the run: last <= first*factor + slack.
var soakGrowth = map[string]struct {
	factor, slack float64
}{
	"gateway goroutines": {1.2, 20},
	"gateway fds":        {1.2, 10},
	"gateway RSS MiB":    {1.3, 16},
	"agents goroutines":  {1.2, 30},
	"agents RSS MiB":     {1.3, 32},
}

// explainedAfter is how long after a restarted tunnel serves again its
// errors still count as the restart's.
const explainedAfter = 3 * time.Second

// soakTunnel is one published name and how traffic reaches it.
type soakTunnel struct {
	name, transport string
	http            bool   // HTTP by Host; else checksummed TCP round trips
	addr            string // public TCP address (TCP tunnels)
	args            []string
	agent           *agent
	debug           string

	mu      sync.Mutex
	windows [][2]time.Time // restarts that explain errors: [begin, served again + explainedAfter]
}

func (st *soakTunnel) explain(from, to time.Time) {
	st.mu.Lock()
	st.windows = append(st.windows, [2]time.Time{from, to})
	st.mu.Unlock()
}

func (st *soakTunnel) explained(start, end time.Time) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, w := range st.windows {
		if !start.After(w[1]) && !end.Before(w[0]) {
			return true
		}
	}
	return false
}

type soakFailure struct {
	tunnel     *soakTunnel
	start, end time.Time
	err        error
}

type soakSample struct {
	at                  time.Duration
	values              map[string]float64
	ok, failed, restart int
}

func TestSoak(t *testing.T) {
	duration := time.Hour
	if s := os.Getenv("SOAK_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("SOAK_DURATION: %v", err)
		}
		duration = d
	}
	ctx, cancel := context.WithTimeout(context.Background(), duration+10*time.Minute)
	defer cancel()
	c := &tc{T: t, ctx: ctx}
	sampleEvery := min(time.Minute, duration/12)
	warmUp := max(duration/6, 30*time.Second)
	restartMin := max(duration/60, 15*time.Second)
	restartMax := max(duration/20, restartMin)
	fmt.Printf("soak: %v of mixed traffic, a restart every %v-%v, samples every %v (warm-up %v)\n", duration, restartMin, restartMax, sampleEvery, warmUp)

	// The gateway: long leases (restarted agents get their ports back),
	// HTTP by host name.
	e := &env{dir: c.TempDir()}
	e.lo, e.hi = portWindow(c, 16)
	tokens := filepath.Join(e.dir, "tokens.yaml")
	if err := os.WriteFile(tokens, []byte(baseTokens), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{
		"--data-dir", filepath.Join(e.dir, "data"), "--debug-addr", "127.0.0.1:0",
		"--ports", fmt.Sprintf("%d-%d", e.lo, e.hi), "--public-bind", "127.0.0.1",
		"--lease", "10m", "--tokens", tokens, "--domain", domain,
	}
	e.gw = launchGateway(c, args, "", "", "", true, false)

	echo := startEcho(c)
	httpBackend := startSumBackend(c)
	var tunnels []*soakTunnel
	for _, tr := range []string{"tcp", "quic", "ws"} {
		for _, isHTTP := range []bool{false, true} {
			kind, backend := "echo", echo
			if isHTTP {
				kind, backend = "web", httpBackend
			}
			st := &soakTunnel{name: "soak-" + kind + "-" + tr, transport: tr, http: isHTTP}
			st.args = e.agentArgs(agentSpec{names: []string{st.name}, transport: tr, backend: backend, args: []string{"--debug-addr", "127.0.0.1:0"}})
			tunnels = append(tunnels, st)
		}
	}
	startSoakAgent := func(st *soakTunnel) {
		st.agent = &agent{startProc(c, "diglett", bin.agent, st.args...)}
		addr := st.agent.tunnel(c, st.name)
		if st.addr != "" && addr != st.addr {
			c.Errorf("%s came back on %s, not its port %s", st.name, addr, st.addr)
		}
		st.addr = addr
		st.debug = st.agent.mustMatch(c, st.agent.stderr, profilerRE, 5*time.Second)[1]
	}
	for _, st := range tunnels {
		startSoakAgent(st)
	}

	// Traffic: new connection per request, checksummed both ways.
	var (
		mu       sync.Mutex
		ok       int
		failures []soakFailure
		stop     = make(chan struct{})
		wg       sync.WaitGroup
	)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	request := func(st *soakTunnel) error {
		if !st.http {
			return roundTrip(st.addr, 1+mrand.IntN(1<<20), 10*time.Second)
		}
		body := make([]byte, 1+mrand.IntN(64<<10))
		rand.Read(body)
		req, _ := http.NewRequest("POST", "http://"+e.gw.httpAddr+"/sum", bytes.NewReader(body))
		req.Host = host(st.name, e.gw.httpAddr)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		sum := sha256.Sum256(body)
		if err != nil || resp.StatusCode != http.StatusOK || string(got) != hex.EncodeToString(sum[:]) {
			return fmt.Errorf("POST %s: %s %q %v", req.Host, resp.Status, got, err)
		}
		return nil
	}
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(time.Duration(10+mrand.IntN(40)) * time.Millisecond): // pace
				}
				st := tunnels[(w+mrand.IntN(len(tunnels)))%len(tunnels)]
				start := time.Now()
				err := request(st)
				mu.Lock()
				if err != nil {
					failures = append(failures, soakFailure{st, start, time.Now(), err})
				} else {
					ok++
				}
				mu.Unlock()
			}
		}()
	}

	runStart := time.Now()

	// waitServed polls a tunnel until a request goes through.
	waitServed := func(st *soakTunnel) error {
		return poll(time.Minute, func() error { return request(st) })
	}
	restarts := 0
	restart := func() {
		restarts++
		begin := time.Now()
		affected := tunnels
		if mrand.IntN(4) == 0 {
			sig := []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL}[mrand.IntN(2)]
			fmt.Printf("soak: %6s  restart the gateway (%v)\n", time.Since(runStart).Round(time.Second), sig)
			e.gw.signal(sig)
			if _, ok := e.gw.waitExit(15 * time.Second); !ok {
				c.Fatalf("gateway did not exit within 15s of %v", sig)
			}
			if s := e.gw.crashed(); s != "" {
				c.Fatalf("gateway crashed: %s", s)
			}
			e.gw = launchGateway(c, e.gw.args, e.gw.addr, e.gw.httpAddr, "", true, false)
		} else {
			st := tunnels[mrand.IntN(len(tunnels))]
			affected = []*soakTunnel{st}
			sig := []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL}[mrand.IntN(2)]
			fmt.Printf("soak: %6s  restart agent %s (%v)\n", time.Since(runStart).Round(time.Second), st.name, sig)
			st.agent.signal(sig)
			if _, ok := st.agent.waitExit(20 * time.Second); !ok {
				c.Fatalf("agent %s did not exit within 20s of %v", st.name, sig)
			}
			if s := st.agent.crashed(); s != "" {
				c.Fatalf("agent %s crashed: %s", st.name, s)
			}
			startSoakAgent(st)
		}
		for _, st := range affected {
			// Until it is known to serve again, its errors are explained.
			st.explain(begin, time.Now().Add(2*time.Minute))
		}
		for _, st := range affected {
			if err := waitServed(st); err != nil {
				c.Fatalf("%s did not serve again within a minute of a restart: %v", st.name, err)
			}
		}
		served := time.Now()
		for _, st := range affected {
			st.mu.Lock()
			st.windows[len(st.windows)-1][1] = served.Add(explainedAfter)
			st.mu.Unlock()
		}
	}

	var samples []soakSample
	sample := func(at time.Duration) {
		s := soakSample{at: at, values: map[string]float64{}, restart: restarts}
		if n, err := e.gw.counts(); err == nil {
			s.values["gateway goroutines"] = float64(n.goroutines)
			s.values["gateway fds"] = float64(n.fds)
		}
		s.values["gateway RSS MiB"] = rssMiB(e.gw.pid())
		for _, st := range tunnels {
			if n, err := readCounts(st.debug, st.agent.pid()); err == nil {
				s.values["agents goroutines"] += float64(n.goroutines)
			}
			s.values["agents RSS MiB"] += rssMiB(st.agent.pid())
		}
		mu.Lock()
		s.ok, s.failed = ok, len(failures)
		mu.Unlock()
		samples = append(samples, s)
		fmt.Printf("soak: %6s  gateway %4.0f goroutines %4.0f fds %6.1f MiB | agents %5.0f goroutines %6.1f MiB | %7d ok %4d errors %3d restarts\n",
			at.Round(time.Second), s.values["gateway goroutines"], s.values["gateway fds"], s.values["gateway RSS MiB"],
			s.values["agents goroutines"], s.values["agents RSS MiB"], s.ok, s.failed, s.restart)
	}

	nextSample := time.NewTicker(sampleEvery)
	defer nextSample.Stop()
	nextRestart := time.NewTimer(restartMin + mrand.N(restartMax-restartMin+1))
	defer nextRestart.Stop()
	end := time.NewTimer(duration)
	defer end.Stop()
	sample(0)
loop:
	for {
		select {
		case <-end.C:
			break loop
		case <-nextSample.C:
			sample(time.Since(runStart))
		case <-nextRestart.C:
			restart()
			nextRestart.Reset(restartMin + mrand.N(restartMax-restartMin+1))
		}
	}
	sample(time.Since(runStart))
	close(stop)
	wg.Wait()

	// Errors: those no restart explains fail the run.
	var explained int
	var unexplained []string
	for _, f := range failures {
		if f.tunnel.explained(f.start, f.end) {
			explained++
			continue
		}
		unexplained = append(unexplained, fmt.Sprintf("%s at %v: %v", f.tunnel.name, f.start.Sub(runStart).Round(time.Millisecond), f.err))
	}
	fmt.Printf("\nsoak: %d requests ok, %d errors during restarts (explained), %d unexplained, %d restarts\n\n", ok, explained, len(unexplained), restarts)
	printSamples(samples)
	if len(unexplained) > 0 {
		c.Errorf("%d errors no restart explains; first: %s", len(unexplained), strings.Join(unexplained[:min(5, len(unexplained))], "; "))
	}
	for _, p := range append([]*proc{e.gw.proc}, agentsOf(tunnels)...) {
		if s := p.crashed(); s != "" {
			c.Errorf("%s crashed: %s", p.name, s)
		}
	}
	if ok == 0 {
		c.Errorf("no request went through")
	}

	// Growth: the last third of the samples after warm-up against the
	// first third.
	var kept []soakSample
	for _, s := range samples {
		if s.at >= warmUp {
			kept = append(kept, s)
		}
	}
	if len(kept) < 3 {
		c.Errorf("only %d samples after warm-up: run longer", len(kept))
		return
	}
	third := len(kept) / 3
	for what, bound := range soakGrowth {
		first := median(kept[:third], what)
		last := median(kept[len(kept)-third:], what)
		limit := first*bound.factor + bound.slack
		fmt.Printf("soak: %-20s first third %8.1f, last third %8.1f, bound %8.1f\n", what, first, last, limit)
		if last > limit {
			c.Errorf("%s grew from %.1f to %.1f across the run (bound %.1f)", what, first, last, limit)
		}
	}
}

func agentsOf(tunnels []*soakTunnel) []*proc {
	var ps []*proc
	for _, st := range tunnels {
		ps = append(ps, st.agent.proc)
	}
	return ps
}

func median(samples []soakSample, what string) float64 {
	var v []float64
	for _, s := range samples {
		v = append(v, s.values[what])
	}
	slices.Sort(v)
	return v[len(v)/2]
}

func printSamples(samples []soakSample) {
	fmt.Println("| time | gateway goroutines | gateway fds | gateway RSS MiB | agents goroutines | agents RSS MiB | requests ok | errors | restarts |")
	fmt.Println("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	for _, s := range samples {
		fmt.Printf("| %v | %.0f | %.0f | %.1f | %.0f | %.1f | %d | %d | %d |\n", s.at.Round(time.Second),
			s.values["gateway goroutines"], s.values["gateway fds"], s.values["gateway RSS MiB"],
			s.values["agents goroutines"], s.values["agents RSS MiB"], s.ok, s.failed, s.restart)
	}
	fmt.Println()
}

var vmRSS = regexp.MustCompile(`(?m)^VmRSS:\s+(\d+) kB`)

// rssMiB is a process's resident memory from /proc, 0 if unknown.
func rssMiB(pid int) float64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	m := vmRSS.FindSubmatch(b)
	if m == nil {
		return 0
	}
	kb, _ := strconv.Atoi(string(m[1]))
	return float64(kb) / 1024
}

// startSumBackend serves HTTP answering each request with the hex SHA-256
// of its body.
func startSumBackend(c *tc) string {
	c.Helper()
	b := startHTTPHandler(c, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		io.Copy(h, r.Body)
		io.WriteString(w, hex.EncodeToString(h.Sum(nil)))
	}))
	return b
}
