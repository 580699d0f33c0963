package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

const domain = "bench.test"

// target is one way to reach the HTTP backend and the iperf3 server.
type target struct {
	name      string // "direct", a transport, or a reference path (refs.go)
	server    *proc  // what serves the tunnel beside the gateway: the agent, or the app for library; nil for direct and floor
	bulkAgent *proc
	httpAddr  string // the backend, or the tunnel's public TCP port (the outer relay's for floor)
	hostName  string // the tunnel's host name on the gateway's HTTP port; empty without Host routing
	hostAddr  string // where requests by Host go, when not the gateway's HTTP port (floor's proxy)
	bulkPort  int    // iperf3's port, or its tunnel's public TCP port; 0 without bulk
}

// direct reports whether t is the direct path, whose figures have keys of
// their own (http64_rps, close_cps, lat_p50, ...).
func (t *target) direct() bool { return t.name == "direct" }

// byHost reports whether t is reached through the gateway's HTTP ingress
// as well as through its public TCP port.
func (t *target) byHost() bool { return !t.direct() && t.hostName != "" }

// hostVia is the address t's requests by Host go to.
func (b *bench) hostVia(t *target) string {
	if t.hostAddr != "" {
		return t.hostAddr
	}
	return b.gwHTTP
}

// offers reports whether t has the figure key at all: floor has no RSS or
// CPU figures, library no bulk path.
func (t *target) offers(key string) bool {
	switch {
	case strings.HasPrefix(key, "bulk"):
		return t.bulkPort != 0
	case strings.HasSuffix(key, "_rss"), strings.HasSuffix(key, "_anon"), strings.HasSuffix(key, "_file"), strings.HasSuffix(key, "_cpu"):
		return t.server != nil
	case strings.HasPrefix(key, "host"), strings.HasPrefix(key, "lathost"), strings.HasPrefix(key, "addhost"):
		return t.direct() || t.byHost()
	}
	return true
}

// bench holds everything started for a run of the suite.
type bench struct {
	o         options
	logDir    string
	ps        procs
	gateway   *proc
	gwAddr    string
	gwHTTP    string
	fp        string
	backend   string
	targets   []*target
	results   []map[string]map[string]float64 // run -> path -> key -> value
	errs      map[string]int64                // "path key" -> errors seen
	mem       *memResult                      // TLS over TCP
	memOthers []*memResult                    // the other transports run
	conns     *connsResult
	started   time.Time
	duration  time.Duration
	notes     []string
	lag       float64    // worst p99 of the latency generator's own lag, ms
	before    *baseline  // the earlier run compared with (-before), or nil
	issue17   []target17 // the targets of issue 17, judged by report

	clusterHop *proc // the cluster reference's forwarding node
}

func run(ctx context.Context, o options) error {
	tools := [][2]string{{"wrk", "wrk"}, {"iperf3", "iperf3"}}
	if o.refs[refCluster] {
		tools = append(tools, [2]string{"etcd", "etcd-server"})
	}
	for _, t := range tools {
		if err := lookTool(t[0], t[1]); err != nil {
			return err
		}
	}
	for _, b := range []string{"diglett", "diglett-server"} {
		if _, err := os.Stat(filepath.Join(o.bin, b)); err != nil {
			return fmt.Errorf("%s: %w (run make build)", filepath.Join(o.bin, b), err)
		}
	}
	b := &bench{o: o, errs: map[string]int64{}, started: time.Now()}
	if o.before != "" {
		// Read before measuring: a file the report cannot use fails now,
		// not after the whole run.
		bl, err := readBaseline(o.before)
		if err != nil {
			return fmt.Errorf("-before: %w", err)
		}
		b.before = bl
	}
	if o.keepLogs != "" {
		b.logDir = o.keepLogs
		if err := os.MkdirAll(b.logDir, 0o755); err != nil {
			return err
		}
	} else {
		d, err := os.MkdirTemp("", "diglett-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		b.logDir = d
	}
	defer b.ps.stopAll()
	if err := b.setup(ctx); err != nil {
		return err
	}
	for r := 0; r < o.runs; r++ {
		fmt.Fprintf(os.Stderr, "bench: run %d of %d\n", r+1, o.runs)
		res := map[string]map[string]float64{}
		for _, t := range b.targets {
			res[t.name] = map[string]float64{}
		}
		b.results = append(b.results, res)
		if err := b.measure(ctx, res); err != nil {
			return err
		}
	}
	b.scanLogs()
	b.ps.stopAll()
	if o.want("memory") && o.sessions > 0 {
		// TLS over TCP's figure is the target's, measured whichever
		// transports run; the others' are beside it.
		m, err := b.memory(ctx, "tcp")
		if err != nil {
			return fmt.Errorf("memory (tcp): %w", err)
		}
		b.mem = m
		for _, tr := range b.o.transports {
			if tr == "tcp" {
				continue
			}
			m, err := b.memory(ctx, tr)
			if err != nil {
				return fmt.Errorf("memory (%s): %w", tr, err)
			}
			b.memOthers = append(b.memOthers, m)
		}
	}
	if o.want("visitors") || o.want("streams") {
		c, err := b.manyConns(ctx)
		if err != nil {
			return fmt.Errorf("10,000 connections: %w", err)
		}
		b.conns = c
	}
	b.duration = time.Since(b.started)
	return b.report()
}

func (b *bench) setup(ctx context.Context) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if b.backend, err = b.startBackend(exe, "backend"); err != nil {
		return err
	}

	iperfPort, err := freePort()
	if err != nil {
		return err
	}
	ip, err := startProc(b.logDir, "iperf3-server", "iperf3", "-s", "-B", "127.0.0.1", "-p", strconv.Itoa(iperfPort))
	if err != nil {
		return err
	}
	b.ps.add(ip)
	if err := waitTCP(ctx, net.JoinHostPort("127.0.0.1", strconv.Itoa(iperfPort)), 10*time.Second); err != nil {
		return fmt.Errorf("iperf3 server: %w", err)
	}
	b.targets = append(b.targets, &target{name: "direct", httpAddr: b.backend, bulkPort: iperfPort})

	b.gateway, b.gwAddr, b.fp, err = b.startGateway(ctx, "gateway", b.o.portsMain, true)
	if err != nil {
		return err
	}
	kg := filepath.Join(b.logDir, "known_gateways")
	tcpLine := func(name string) *regexp.Regexp {
		return regexp.MustCompile(`^` + name + `: tcp://(\S+) -> `)
	}
	for _, tr := range b.o.transports {
		t := &target{name: tr}
		agent := func(name, backend string) (*proc, error) {
			args := []string{"-g", b.gwAddr, "--transport", tr, "--known-gateways", kg, "-n", name}
			if tr == "ws" {
				args = append(args, "--ws-addr", b.gwAddr)
			}
			p, err := startProc(b.logDir, "agent-"+name, filepath.Join(b.o.bin, "diglett"), append(args, backend)...)
			if err == nil {
				b.ps.add(p)
			}
			return p, err
		}
		hn := "http-" + tr
		if t.server, err = agent(hn, b.backend); err != nil {
			return err
		}
		m, err := t.server.waitLines(30*time.Second, tcpLine(hn), regexp.MustCompile(`^`+hn+`: http://(\S+) -> `))
		if err != nil {
			return err
		}
		t.httpAddr = m[0][1]
		host, _, _ := strings.Cut(m[1][1], ":")
		t.hostName = host
		bn := "iperf-" + tr
		if t.bulkAgent, err = agent(bn, net.JoinHostPort("127.0.0.1", strconv.Itoa(iperfPort))); err != nil {
			return err
		}
		if m, err = t.bulkAgent.waitLines(30*time.Second, tcpLine(bn)); err != nil {
			return err
		}
		_, ps, _ := net.SplitHostPort(m[0][1])
		if t.bulkPort, err = strconv.Atoi(ps); err != nil {
			return fmt.Errorf("agent %s printed %q: %w", bn, m[0][0], err)
		}
		b.targets = append(b.targets, t)
	}
	for _, r := range refOrder {
		if !b.o.refs[r] {
			continue
		}
		switch r {
		case refLibrary:
			err = b.startLibrary(exe, kg)
		case refCluster:
			err = b.startCluster(ctx)
		default:
			err = b.startFloor(exe, iperfPort)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", r, err)
		}
	}
	// Every path answers before anything is measured.
	for _, t := range b.targets {
		if err := checkHTTP(ctx, t.httpAddr, t.httpAddr); err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		if t.byHost() {
			if err := checkHTTP(ctx, b.hostVia(t), t.hostName); err != nil {
				return fmt.Errorf("%s by Host: %w", t.name, err)
			}
		}
	}
	return nil
}

// startBackend starts this program as the direct backend and returns its
// address.
func (b *bench) startBackend(exe, name string) (string, error) {
	port, err := freePort()
	if err != nil {
		return "", err
	}
	be, err := startProc(b.logDir, name, exe, "backend", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return "", err
	}
	b.ps.add(be)
	m, err := be.waitLines(10*time.Second, regexp.MustCompile(`^backend listening on (\S+)`))
	if err != nil {
		return "", err
	}
	return m[0][1], nil
}

// startGateway starts bin/diglett-server with its HTTP ingress when http.
func (b *bench) startGateway(ctx context.Context, name, ports string, http bool) (*proc, string, string, error) {
	agentPort, err := freePort()
	if err != nil {
		return nil, "", "", err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(agentPort))
	args := []string{"-l", addr, "--data-dir", filepath.Join(b.logDir, name+"-data"), "--public-bind", "127.0.0.1", "--ports", ports,
		// Every agent here is the one anonymous identity: no quotas.
		"--max-names-per-identity", "0", "--max-ports-per-identity", "0", "--max-sessions-per-identity", "0"}
	if http {
		hp, err := freePort()
		if err != nil {
			return nil, "", "", err
		}
		b.gwHTTP = net.JoinHostPort("127.0.0.1", strconv.Itoa(hp))
		args = append(args, "--domain", domain, "--http-addr", b.gwHTTP)
	}
	g, err := startProc(b.logDir, name, filepath.Join(b.o.bin, "diglett-server"), args...)
	if err != nil {
		return nil, "", "", err
	}
	b.ps.add(g)
	m, err := g.waitLines(15*time.Second, regexp.MustCompile(`^gateway key fingerprint: (\S+)`))
	if err != nil {
		return nil, "", "", err
	}
	if err := waitTCP(ctx, addr, 10*time.Second); err != nil {
		return nil, "", "", err
	}
	if http {
		if err := waitTCP(ctx, b.gwHTTP, 10*time.Second); err != nil {
			return nil, "", "", err
		}
	}
	return g, addr, m[0][1], nil
}

// alive fails when the gateway or an agent has exited.
func (b *bench) alive() error {
	for _, p := range b.ps.list {
		if err := p.alive(); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "  "+format+"\n", args...)
}

// measure runs every workload once on every path, paths one after the
// other within each workload.
func (b *bench) measure(ctx context.Context, res map[string]map[string]float64) error {
	o := b.o
	if o.want("bulk") {
		for _, streams := range []int{1, 8} {
			for _, reverse := range []bool{false, true} {
				key := fmt.Sprintf("bulk%d_up", streams)
				if reverse {
					key = fmt.Sprintf("bulk%d_down", streams)
				}
				for _, t := range b.targets {
					if t.bulkPort == 0 {
						continue
					}
					v, err := runIperf(ctx, o.secs, t.bulkPort, streams, reverse)
					if err != nil {
						return fmt.Errorf("%s %s: %w", t.name, key, err)
					}
					res[t.name][key] = v
					b.progress("%-7s %-12s %8.2f Gbit/s", t.name, key, v)
				}
				if err := b.alive(); err != nil {
					return err
				}
			}
		}
	}
	if o.want("http") {
		for _, conns := range []int{64, 256} {
			for _, t := range b.targets {
				type way struct {
					key, url string
					headers  []string
				}
				var ways []way
				switch {
				case t.direct():
					ways = []way{{fmt.Sprintf("http%d", conns), "http://" + t.httpAddr + "/", nil}}
				case t.byHost():
					ways = []way{{fmt.Sprintf("host%d", conns), "http://" + b.hostVia(t) + "/", []string{"Host: " + t.hostName}}}
				}
				if !t.direct() {
					ways = append(ways, way{fmt.Sprintf("tcp%d", conns), "http://" + t.httpAddr + "/", nil})
				}
				for _, w := range ways {
					var stopRSS func() memSample
					var cpu0 time.Duration
					if t.server != nil && conns == 64 {
						stopRSS = peakRSS(b.gateway.pid(), t.server.pid())
						cpu0 = cpuTime(b.gateway.pid()) + cpuTime(t.server.pid())
					}
					r, err := runWrk(ctx, o.secs, conns, w.url, w.headers...)
					if stopRSS != nil {
						peak := stopRSS()
						cpu := cpuTime(b.gateway.pid()) + cpuTime(t.server.pid()) - cpu0
						res[t.name][w.key+"_rss"] = mb(peak.vm)
						res[t.name][w.key+"_anon"] = mb(peak.anon)
						res[t.name][w.key+"_file"] = mb(peak.file)
						if r.requests > 0 {
							res[t.name][w.key+"_cpu"] = float64(cpu.Microseconds()) / float64(r.requests)
						}
					}
					if err != nil {
						return fmt.Errorf("%s %s: %w", t.name, w.key, err)
					}
					res[t.name][w.key+"_rps"] = r.rps
					res[t.name][w.key+"_p50"] = r.p50
					res[t.name][w.key+"_p99"] = r.p99
					b.errs[t.name+" "+w.key] += r.errors
					b.progress("%-7s %-8s %9.0f req/s  p50 %.3f ms  p99 %.3f ms  errors %d", t.name, w.key, r.rps, r.p50, r.p99, r.errors)
				}
			}
			if err := b.alive(); err != nil {
				return err
			}
		}
		if err := b.freshRSS(ctx, res); err != nil {
			return fmt.Errorf("fresh gateway and agent: %w", err)
		}
	}
	if o.want("close") {
		for _, t := range b.targets {
			type way struct {
				key, url string
				headers  []string
			}
			ways := []way{{"close", "http://" + t.httpAddr + "/", []string{"Connection: close"}}}
			if !t.direct() {
				ways = []way{{"tcpclose", "http://" + t.httpAddr + "/", []string{"Connection: close"}}}
				if t.byHost() {
					ways = append([]way{{"hostclose", "http://" + b.hostVia(t) + "/", []string{"Host: " + t.hostName, "Connection: close"}}}, ways...)
				}
			}
			for _, w := range ways {
				r, err := runWrk(ctx, o.secs, 64, w.url, w.headers...)
				if err != nil {
					return fmt.Errorf("%s %s: %w", t.name, w.key, err)
				}
				res[t.name][w.key+"_cps"] = r.rps
				b.errs[t.name+" "+w.key] += r.errors
				b.progress("%-7s %-9s %8.0f conn/s  errors %d", t.name, w.key, r.rps, r.errors)
			}
		}
		if err := b.alive(); err != nil {
			return err
		}
	}
	if o.want("hol") {
		if err := b.headOfLine(ctx, res); err != nil {
			return err
		}
	}
	if o.want("latency") {
		for _, t := range b.targets {
			type way struct{ key, addr, host string }
			ways := []way{{"lat", t.httpAddr, t.httpAddr}}
			if !t.direct() {
				ways = []way{{"lattcp", t.httpAddr, t.httpAddr}}
				if t.byHost() {
					ways = append([]way{{"lathost", b.hostVia(t), t.hostName}}, ways...)
				}
			}
			for _, w := range ways {
				r, err := fixedRate(ctx, w.addr, w.host, o.rate, 64, o.latSecs)
				if err != nil {
					return fmt.Errorf("%s %s: %w", t.name, w.key, err)
				}
				res[t.name][w.key+"_p50"] = r.p50
				res[t.name][w.key+"_p99"] = r.p99
				b.errs[t.name+" "+w.key] += r.errors
				b.progress("%-7s %-8s p50 %.3f ms  p99 %.3f ms  max %.3f ms  (%d requests, %d errors, sender lag p99 %.3f ms)",
					t.name, w.key, r.p50, r.p99, r.max, r.requests, r.errors, r.late)
				b.lag = max(b.lag, r.late)
			}
		}
		// What each path adds, within this run.
		d := res["direct"]
		for _, t := range b.targets[1:] {
			for _, k := range []string{"host", "tcp"} {
				for _, q := range []string{"p50", "p99"} {
					if v, ok := res[t.name]["lat"+k+"_"+q]; ok {
						res[t.name]["add"+k+"_"+q] = v - d["lat_"+q]
					}
				}
			}
		}
		if err := b.alive(); err != nil {
			return err
		}
	}
	return nil
}

// scanLogs notes the warnings, errors and panics the gateway and agents
// logged while being measured.
func (b *bench) scanLogs() { b.scanProcLogs(b.ps.list) }

// scanProcLogs is scanLogs for the given processes.
func (b *bench) scanProcLogs(list []*proc) {
	re := regexp.MustCompile(`level=(WARN|ERROR)|panic:|fatal error:`)
	// Expected on this set-up: no tokens file, first use of the key.
	expected := regexp.MustCompile(`msg="(no --tokens file|pinned the key of a new gateway)`)
	for _, p := range list {
		data, err := os.ReadFile(p.logPath)
		if err != nil {
			continue
		}
		counts := map[string]int{}
		var first []string
		for _, l := range strings.Split(string(data), "\n") {
			if m := re.FindString(l); m != "" && !expected.MatchString(l) {
				counts[m]++
				if len(first) < 3 {
					first = append(first, l)
				}
			}
		}
		if len(counts) > 0 {
			b.notes = append(b.notes, fmt.Sprintf("%s logged %v; first lines:\n\n    %s", p.name, counts, strings.Join(first, "\n    ")))
		}
	}
}
