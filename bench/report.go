package main

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// row is one line of the results table.
type row struct {
	label, unit string
	dkey, key   string // keys of direct's figure and of the transports'
	digits      int
	added       bool // a difference to direct, computed per run; no direct column
}

func rows() []row {
	rs := []row{
		{"Bulk TCP, 1 stream, visitor → backend", "Gbit/s", "bulk1_up", "bulk1_up", 2, false},
		{"Bulk TCP, 1 stream, backend → visitor", "Gbit/s", "bulk1_down", "bulk1_down", 2, false},
		{"Bulk TCP, 8 streams, visitor → backend", "Gbit/s", "bulk8_up", "bulk8_up", 2, false},
		{"Bulk TCP, 8 streams, backend → visitor", "Gbit/s", "bulk8_down", "bulk8_down", 2, false},
	}
	for _, c := range []int{64, 256} {
		for _, w := range []struct{ name, key string }{{"HTTP by Host", "host"}, {"HTTP via TCP port", "tcp"}} {
			k := fmt.Sprintf("%s%d", w.key, c)
			d := fmt.Sprintf("http%d", c)
			rs = append(rs,
				row{fmt.Sprintf("%s, %d conns", w.name, c), "req/s", d + "_rps", k + "_rps", 0, false},
				row{fmt.Sprintf("%s, %d conns, p50", w.name, c), "ms", d + "_p50", k + "_p50", 3, false},
				row{fmt.Sprintf("%s, %d conns, p99", w.name, c), "ms", d + "_p99", k + "_p99", 3, false},
			)
		}
	}
	rs = append(rs,
		row{"New connection per request, by Host", "conn/s", "close_cps", "hostclose_cps", 0, false},
		row{"New connection per request, via TCP port", "conn/s", "close_cps", "tcpclose_cps", 0, false},
	)
	for _, w := range []struct{ name, key string }{{"by Host", "host"}, {"via TCP port", "tcp"}} {
		rs = append(rs,
			row{"1,000 req/s, " + w.name + ", p50", "ms", "lat_p50", "lat" + w.key + "_p50", 3, false},
			row{"1,000 req/s, " + w.name + ", p99", "ms", "lat_p99", "lat" + w.key + "_p99", 3, false},
			row{"1,000 req/s, " + w.name + ", added p50", "ms", "", "add" + w.key + "_p50", 3, true},
			row{"1,000 req/s, " + w.name + ", added p99", "ms", "", "add" + w.key + "_p99", 3, true},
		)
	}
	for _, w := range []struct{ name, key string }{{"HTTP by Host", "host64"}, {"HTTP via TCP port", "tcp64"}} {
		for _, k := range []struct{ what, sfx string }{
			{"shared gateway", ""},
			{"a fresh pair", "_fresh"},
		} {
			rs = append(rs,
				row{"Gateway + agent peak RSS, " + w.name + ", 64 conns, " + k.what, "MB", "", w.key + k.sfx + "_rss", 1, true},
				row{"Gateway + agent peak RssAnon, " + w.name + ", 64 conns, " + k.what, "MB", "", w.key + k.sfx + "_anon", 1, true},
				row{"Gateway + agent RssFile at the RSS peak, " + w.name + ", 64 conns, " + k.what, "MB", "", w.key + k.sfx + "_file", 1, true},
			)
		}
	}
	rs = append(rs,
		row{"Gateway + agent CPU per request, HTTP by Host, 64 conns", "µs", "", "host64_cpu", 1, true},
		row{"Gateway + agent CPU per request, HTTP via TCP port, 64 conns", "µs", "", "tcp64_cpu", 1, true},
	)
	return rs
}

// value is the median over runs of a path's value for key.
func (b *bench) value(path, key string) (float64, bool) {
	v, _, _ := b.figure(path, key, "")
	var has bool
	for _, res := range b.results {
		_, ok := res[path][key]
		has = has || ok
	}
	return v, has
}

// figure is the median over runs of a path's value for key, and of its
// ratio to direct's dkey within each run; ok is false when the ratio was
// not measured.
func (b *bench) figure(path, key, dkey string) (v, ratio float64, ok bool) {
	var vs, rs []float64
	for _, res := range b.results {
		x, has := res[path][key]
		if !has {
			continue
		}
		vs = append(vs, x)
		if dkey != "" {
			if d, has := res["direct"][dkey]; has && d != 0 {
				rs = append(rs, x/d)
			}
		}
	}
	if len(vs) == 0 {
		return 0, 0, false
	}
	return median(vs), median(rs), len(rs) > 0
}

// paths lists the measured paths but direct, in column order: the
// transports, then the reference paths library and floor.
func (b *bench) paths() []string {
	var ts []string
	for _, t := range b.targets[1:] {
		ts = append(ts, t.name)
	}
	return ts
}

// transports lists the measured transports.
func (b *bench) transports() []string {
	var ts []string
	for _, t := range b.targets[1:] {
		if !b.o.refs[t.name] {
			ts = append(ts, t.name)
		}
	}
	return ts
}

// offers reports whether the path has the figure key at all (see
// target.offers).
func (b *bench) offers(path, key string) bool {
	for _, t := range b.targets {
		if t.name == path {
			return t.offers(key)
		}
	}
	return false
}

func (b *bench) report() error {
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }
	ts := b.paths()

	p("# diglett benchmark results\n\n")
	p("Written by `make bench` (scripts/bench.sh, program in bench/). Every figure is the median of %d run(s); the ratio in parentheses is the median of the per-run ratios to the direct path measured in the same run, one path after the other.\n\n", b.o.runs)
	p("- Date: %s (took %v)\n", b.started.Format("2006-01-02 15:04:05 MST"), b.duration.Round(time.Second))
	p("- Machine: %s CPU(s) (`nproc`), %s, Linux %s, %s\n", cmdOut("nproc"), cpuModel(), readTrim("/proc/sys/kernel/osrelease"), runtime.Version())
	p("- Commit: %s\n", commit())
	p("- Command: `%s`\n", b.o.command)
	p("- Settings: %d s per wrk/iperf3 measurement (wrk 2 threads; iperf3 `-O 1` omits the first second), %d s at %d req/s over 64 keep-alive connections for latency (plus 1 s of warm-up), transports %s, reference paths %s\n",
		b.o.secs, b.o.latSecs, b.o.rate, strings.Join(b.transports(), ", "), orNone(b.refs()))
	p("- Tools: %s; %s\n", firstLine(cmdOutAll("wrk", "-v")), firstLine(cmdOut("iperf3", "--version")))
	p("- Direct: a Go HTTP server answering 100 bytes with keep-alive, and `iperf3 -s`, on 127.0.0.1. Tunnels: `bin/diglett-server` (HTTP ingress on its own port, routed by `Host: NAME.%s`) and one `bin/diglett` agent per transport and backend, with its default 2 sessions.", domain)
	if b.o.refs[refLibrary] {
		p(" Library (reference): the app itself serves the same handler on `diglett.Listen` (TLS over TCP, default 2 sessions) to the same gateway, with no agent process and no hop from an agent to a backend; it has no iperf3 behind it, so no bulk figures.")
	}
	if b.o.refs[refCluster] {
		p(" Cluster (reference): two `bin/diglett-server` nodes of one cluster on a local etcd, the agent (TLS over TCP) on the first only, and every request sent to the second node, which forwards it to the first over their link (mutual TLS, multiplexed); beside tcp, a session local to the gateway reached, it is the cost of the cross-node hop. Its RSS and CPU are the first node's agent's and the main gateway's, not the nodes'; no bulk figures.")
	}
	if b.o.refs[refFloor] {
		p(" Floor (reference): two chained plain TCP relay processes (`bench relay`, 32 KiB copy buffers, half-close kept) in front of the direct backend and `iperf3 -s`, with no encryption and no multiplexing, modelling the cheapest two-process path (gateway + agent) on this machine; by Host, the standard library's reverse proxy (`bench proxy`, set up as the gateway's ingress) takes the outer relay's place; no RSS or CPU figures.")
	}
	p("\n\n")

	figs := b.figures()
	b.issue17 = issue17(figs, b.memPerSession(), b.mem != nil, b.before)
	p("## Issue 17 targets\n\n")
	if b.before != nil {
		p("Before: `%s` (commit %s, %s), read back; after: this run. ", b.before.file, orUnknown(b.before.commit), orUnknown(b.before.date))
	} else {
		p("No baseline given (`-before`), so no before column. ")
	}
	p("Ratios are to direct in the same run, and so are the floor's figures used as goals; a verdict is for this run's figure only. The RSS goal is judged on a fresh gateway and tcp agent of their own under the 64-connection load (see the RSS rows of the Figures below; the suite's shared gateway also holds every other path's agent and has served the bulk runs, and the file pages of the two binaries are part of VmRSS, so RssAnon is given beside it).\n\n")
	p("| target | path | before | after | goal | verdict |\n| --- | --- | --- | --- | --- | --- |\n")
	for _, t := range b.issue17 {
		v := t.Verdict
		if v == verdictFail {
			v = "**FAIL**"
		}
		p("| %s | %s | %s | %s | %s | %s |\n", t.Target, t.Path, t.Before, t.After, t.Goal, v)
	}
	p("\n")

	p("## Figures\n\n")
	p("| workload | unit | direct |")
	for _, t := range ts {
		p(" %s |", t)
	}
	p("\n| --- | --- | --- |")
	for range ts {
		p(" --- |")
	}
	p("\n")
	for _, r := range rows() {
		var cells []string
		any := false
		if r.added {
			cells = append(cells, "—")
		} else if v, ok := b.value("direct", r.dkey); ok {
			cells = append(cells, num(v, r.digits))
			any = true
		} else {
			cells = append(cells, "")
		}
		for _, t := range ts {
			v, ratio, ok := b.figure(t, r.key, r.dkey)
			switch {
			case r.added:
				if v, has := b.value(t, r.key); has {
					if r.unit == "ms" {
						cells = append(cells, fmt.Sprintf("%+.*f", r.digits, v))
					} else {
						cells = append(cells, num(v, r.digits))
					}
					any = true
				} else {
					cells = append(cells, "")
				}
			case ok:
				cells = append(cells, fmt.Sprintf("%s (%.2f×)", num(v, r.digits), ratio))
				any = true
			default:
				cells = append(cells, "")
			}
		}
		if any {
			p("| %s | %s | %s |\n", r.label, r.unit, strings.Join(cells, " | "))
		}
	}
	p("\nThroughput ratios above 1× are better than direct, latency ratios below 1×. \"Added\" is the path's figure minus direct's, within each run. RSS and CPU are those of the gateway and of the agent serving that tunnel, sampled every 100 ms during the 64-connection run: \"shared gateway\" is the suite's gateway, which also holds the other paths' agents (idle meanwhile) and has served the bulk runs before; \"a fresh pair\" (tcp only) is a gateway and a tcp agent started for that measurement alone, serving the same two 64-connection runs. RSS is the peak of the summed VmRSS, RssAnon the peak of the summed RssAnon (heap and stacks), RssFile the summed mapped file pages (mostly the binaries' own) at the RSS peak.")
	if b.o.refs[refLibrary] {
		p(" For library the second process is the app itself, so its RSS and CPU include the HTTP server's own work, which for the other paths happens in the backend, outside these figures.")
	}
	p("\n\n")

	if b.mem != nil {
		m := b.mem
		p("## Gateway memory with idle agent sessions\n\n")
		p("A fresh gateway; %d sessions opened from the bench process with `diglett.Listen` (TLS over TCP, `Connections: 1`, one name and public port each) in %v", m.sessions, m.setup.Round(time.Millisecond))
		if m.errors > 0 {
			p(", %d failed (first: %v)", m.errors, m.firstErr)
		}
		p(".\n\n| gateway VmRSS idle | with %d sessions | per session | RssAnon idle → with | RssFile idle → with |\n| --- | --- | --- | --- | --- |\n| %.1f MB | %.1f MB | %.1f KB | %.1f MB → %.1f MB | %.1f MB → %.1f MB |\n\n",
			m.sessions, float64(m.before)/(1<<20), float64(m.after)/(1<<20), m.perSession(),
			mb(m.beforeMem.anon), mb(m.afterMem.anon), mb(m.beforeMem.file), mb(m.afterMem.file))
		p("RssAnon is what the gateway allocated (heap, stacks); RssFile is mapped file pages, mostly its own binary's.\n\n")
		if m.used.vm > 0 {
			p("The same sessions idle again after each carried %d KiB from its backend to one visitor of its public port (%d of %d visitors got every byte", memTraffic>>10, m.usedSessions, m.sessions)
			if m.usedErr != nil {
				p("; first failure: %v", m.usedErr)
			}
			p("): what a session that has served anything keeps.\n\n| gateway VmRSS | per session | RssAnon |\n| --- | --- | --- |\n| %.1f MB | %.1f KB | %.1f MB |\n\n",
				float64(m.used.vm)/(1<<20), m.perSessionUsed(), mb(m.used.anon))
		}
		if len(b.memOthers) > 0 {
			p("### By transport\n\nThe same measurement over each transport of the run, each on a fresh gateway of its own (`Transport` of `diglett.Config`; WebSocket on the gateway's agent port).\n\n")
			p("| transport | sessions opened | gateway VmRSS per idle session | idle again after %d KiB each | RssAnon with the sessions |\n| --- | --- | --- | --- | --- |\n", memTraffic>>10)
			for _, m := range append([]*memResult{b.mem}, b.memOthers...) {
				used := "—"
				if m.used.vm > 0 {
					used = fmt.Sprintf("%.1f KB (%d of %d whole)", m.perSessionUsed(), m.usedSessions, m.sessions)
				}
				p("| %s | %d of %d | %.1f KB | %s | %.1f MB |\n", m.transport, m.sessions, m.sessions+m.errors, m.perSession(), used, mb(m.afterMem.anon))
			}
			p("\n")
		}
	}

	if _, ok := b.value("direct", "hol_rate"); ok {
		p("## Head-of-line: a visitor that stops reading\n\n")
		p("Through each tunnel's public TCP port (the backend itself for direct, the outer relay for floor), %d visitors each download `GET /stream` (an endless body the backend writes 64 KiB at a time) at once for %d s (after 0.5 s not counted); then again while a %dth visitor holds a download of its own open on the same tunnel and never reads after the headers (opened 1 s before, so that every buffer on its way is full). Target: the %d visitors' aggregate rate with the stalled one within 10%% of the rate without it (ratio ≥ 0.90).\n\n",
			holVisitors, b.o.secs, holVisitors+1, holVisitors)
		p("| path | %d visitors | with a stalled one | ratio | slowest visitor, without / with | target ≥ 0.90 |\n| --- | --- | --- | --- | --- | --- |\n", holVisitors)
		for _, path := range append([]string{"direct"}, ts...) {
			base, _ := b.value(path, "hol_rate")
			with, _ := b.value(path, "hol_stalled_rate")
			ratio, ok := b.value(path, "hol_ratio")
			if !ok {
				continue
			}
			s0, _ := b.value(path, "hol_slowest")
			s1, _ := b.value(path, "hol_stalled_slowest")
			p("| %s | %.2f Gbit/s | %.2f Gbit/s | %.2f× | %.3f / %.3f Gbit/s | %s |\n", path, base, with, ratio, s0, s1, verdict(ratio >= 0.90))
		}
		p("\nMedians over the runs; the ratio is the median of the per-run ratios.\n\n")
	}

	if c := b.conns; c != nil {
		if r := c.streams; r != nil {
			p("## Gateway memory per idle open stream\n\n")
			p("A fresh gateway and one tcp agent (default 2 sessions) publishing the direct backend; %d visitor connections opened from the bench process through the tunnel's public TCP port in %v, each exchanging one request and answer (so the stream is open end to end) and then left idle", r.held, r.open.Round(time.Millisecond))
			if r.errs1 > 0 {
				p(", %d failed (first: %v)", r.errs1, r.first)
			}
			p(". Gateway VmRSS is the last of five samples a second apart. Max open files: %s.\n\n", strings.Join(c.limits, ", "))
			p("| gateway VmRSS idle | with %d idle streams | per stream | agent VmRSS idle → with | target ≤ 20 KB |\n| --- | --- | --- | --- | --- |\n", r.held)
			p("| %.1f MB | %.1f MB | %.1f KB | %.1f MB → %.1f MB | %s |\n\n", mb(c.before), mb(c.after), c.perStream(), mb(c.agentBefore), mb(c.agentAft), verdict(c.perStream() <= 20))
		}
		if len(c.visitors) > 0 {
			p("## %d concurrent keep-alive visitors through one agent\n\n", c.n)
			p("A fresh gateway and one tcp agent (default 2 sessions) per row. The bench process opens %d connections (200 at a time, 10 s dial bound, 30 s bound per request), each sends `GET /` and reads the 100-byte answer, and keeps the connection open; with all of them open each sends a second request on its connection. Errors are failed dials and failed or wrong answers, first and second round. RSS is the peak of the samples taken once all are open and after the second round. Max open files: %s.\n\n", c.n, strings.Join(c.limits, ", "))
			p("| way | open | errors, 1st / 2nd request | time to open all / 2nd round | gateway VmRSS idle → with all open | agent VmRSS with all open | target 0 errors |\n| --- | --- | --- | --- | --- | --- | --- |\n")
			for _, r := range c.visitors {
				p("| %s | %d | %d / %d | %v / %v | %.1f MB → %.1f MB | %.1f MB | %s |\n", r.way, r.held, r.errs1, r.errs2,
					r.open.Round(time.Millisecond), r.second.Round(time.Millisecond), mb(r.rssIdle), mb(r.rssOpen), mb(r.agentOpen), verdict(r.errs1+r.errs2 == 0))
			}
			for _, r := range c.visitors {
				if r.first != nil {
					p("\nFirst error %s: `%v`\n", r.way, r.first)
				}
			}
			p("\n")
		}
	}

	p("## Targets of issue 5\n\n")
	var table strings.Builder
	fmt.Fprintf(&table, "| target |")
	for _, t := range ts {
		fmt.Fprintf(&table, " %s |", t)
	}
	fmt.Fprintf(&table, "\n| --- |")
	for range ts {
		fmt.Fprintf(&table, " --- |")
	}
	fmt.Fprintf(&table, "\n")
	anyTarget := false
	type tgt struct {
		label, key, dkey string
		limit            float64
		atMost           bool
		unit             string // "×", or the unit of an added ("+") or absolute figure
	}
	tgts := []tgt{
		{"HTTP by Host, 64 conns: ≥ 0.40× direct req/s", "host64_rps", "http64_rps", 0.40, false, "×"},
		{"HTTP via TCP port, 64 conns: ≥ 0.50× direct req/s", "tcp64_rps", "http64_rps", 0.50, false, "×"},
		{"HTTP via TCP port, 256 conns: ≥ 0.50× direct req/s", "tcp256_rps", "http256_rps", 0.50, false, "×"},
		{"Bulk TCP, 1 stream, visitor → backend: ≥ 0.30× direct", "bulk1_up", "bulk1_up", 0.30, false, "×"},
		{"Bulk TCP, 1 stream, backend → visitor: ≥ 0.30× direct", "bulk1_down", "bulk1_down", 0.30, false, "×"},
		{"Added latency at 1,000 req/s by Host: p50 ≤ +0.15 ms", "addhost_p50", "", 0.15, true, " ms"},
		{"Added latency at 1,000 req/s by Host: p99 ≤ +0.5 ms", "addhost_p99", "", 0.5, true, " ms"},
		{"Added latency at 1,000 req/s via TCP port: p50 ≤ +0.15 ms", "addtcp_p50", "", 0.15, true, " ms"},
		{"Added latency at 1,000 req/s via TCP port: p99 ≤ +0.5 ms", "addtcp_p99", "", 0.5, true, " ms"},
		{"Gateway + agent ≤ 40 MB RSS under 64-conn HTTP by Host (shared gateway)", "host64_rss", "", 40, true, "MB"},
	}
	for _, g := range tgts {
		var cells []string
		measured := false
		for _, t := range ts {
			_, ratio, ok := b.figure(t, g.key, g.dkey)
			if g.dkey == "" {
				ratio, ok = b.value(t, g.key)
			}
			if !b.offers(t, g.key) {
				cells = append(cells, "—")
				continue
			}
			if !ok {
				cells = append(cells, "not measured")
				continue
			}
			measured = true
			pass := ratio >= g.limit
			if g.atMost {
				pass = ratio <= g.limit
			}
			verdict := "**FAIL**"
			if pass {
				verdict = "pass"
			}
			switch g.unit {
			case "×":
				cells = append(cells, fmt.Sprintf("%s %.2f×", verdict, ratio))
			case "MB":
				cells = append(cells, fmt.Sprintf("%s %.1f MB", verdict, ratio))
			default:
				cells = append(cells, fmt.Sprintf("%s %+.2f%s", verdict, ratio, g.unit))
			}
		}
		if measured {
			fmt.Fprintf(&table, "| %s | %s |\n", g.label, strings.Join(cells, " | "))
			anyTarget = true
		}
	}
	if anyTarget {
		p("%s", table.String())
		if len(b.refs()) > 0 {
			p("\nThe reference columns are yardsticks, not held to the targets (a dash marks a figure the path does not have): floor is two plain TCP relays in a chain (by Host: the standard library's reverse proxy, then a plain relay), with no encryption and no multiplexing, the cheapest two-process path (gateway + agent) on this machine, library is the app serving on `diglett.Listen` itself, without the agent process, and cluster goes through a second gateway node that forwards to the node holding the agent's session.\n")
		}
	}
	if b.mem != nil {
		verdict := "**FAIL**"
		if b.mem.perSession() <= 20 {
			verdict = "pass"
		}
		p("\n≤ 20 KB of gateway memory per idle agent session (tcp): %s, %.1f KB.\n", verdict, b.mem.perSession())
	}
	for _, path := range ts {
		if ratio, ok := b.value(path, "hol_ratio"); ok {
			p("\nHead-of-line, %s: 8 visitors' rate with a stalled visitor ≥ 0.90× the rate without: %s, %.2f×.\n", path, verdict(ratio >= 0.90), ratio)
		}
	}
	if c := b.conns; c != nil {
		if c.streams != nil {
			p("\n≤ 20 KB of gateway memory per idle stream (tcp, %d streams): %s, %.1f KB.\n", c.streams.held, verdict(c.perStream() <= 20), c.perStream())
		}
		for _, r := range c.visitors {
			p("\n0 errors with %d concurrent keep-alive visitors (tcp, %s): %s, %d errors, gateway VmRSS %.1f MB with all open.\n", c.n, r.way, verdict(r.errs1+r.errs2 == 0), r.errs1+r.errs2, mb(r.rssOpen))
		}
	}
	var notYet []string
	if _, ok := b.value("direct", "hol_ratio"); !ok {
		notYet = append(notYet, "head-of-line blocking with a stalled download (BENCH_ONLY=hol)")
	}
	if b.conns == nil || b.conns.streams == nil {
		notYet = append(notYet, "memory per idle stream (BENCH_ONLY=streams)")
	}
	if b.conns == nil || len(b.conns.visitors) == 0 {
		notYet = append(notYet, "10,000 concurrent keep-alive visitors (BENCH_ONLY=visitors)")
	}
	if len(notYet) > 0 {
		p("\nNot measured in this run: %s.\n", strings.Join(notYet, ", "))
	}
	p("\n")

	p("## Errors and notes\n\n")
	nerr := 0
	for k, n := range b.errs {
		if n > 0 {
			p("- %s: %d errors (socket errors or non-2xx answers, summed over runs)\n", k, n)
			nerr++
		}
	}
	if nerr == 0 {
		p("- wrk and the latency generator saw no errors (socket errors, timeouts, non-2xx answers).\n")
	}
	if b.lag > 0 {
		p("- The latency generator's schedule woke up to %.2f ms late (p99 of its own lag, worst path); that lag is not counted in the latencies, waiting for a free connection is.\n", b.lag)
	}
	for _, n := range b.notes {
		p("- %s\n", n)
	}
	p("\n![ratios to direct](results.png)\n")

	if err := os.MkdirAll(b.o.out, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(b.o.out, "results.md"), []byte(w.String()), 0o644); err != nil {
		return err
	}
	if err := b.writeJSON(filepath.Join(b.o.out, "results.json"), figs); err != nil {
		return fmt.Errorf("results.json: %w", err)
	}
	chart := b.chart
	if b.before != nil {
		chart = b.chartBeforeAfter
	}
	if err := chart(filepath.Join(b.o.out, "results.png")); err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	fmt.Fprintf(os.Stderr, "bench: wrote %s, %s and %s\n", filepath.Join(b.o.out, "results.md"), filepath.Join(b.o.out, "results.json"), filepath.Join(b.o.out, "results.png"))
	return nil
}

// chart draws the main ratios to direct as bars per transport, with the
// targets beside them.
func (b *bench) chart(path string) error {
	groups := []struct {
		label, key, dkey string
		target           float64
	}{
		{"bulk 1 stream\nvisitor → backend", "bulk1_up", "bulk1_up", 0.30},
		{"bulk 1 stream\nbackend → visitor", "bulk1_down", "bulk1_down", 0.30},
		{"HTTP by Host\n64 conns", "host64_rps", "http64_rps", 0.40},
		{"HTTP via TCP port\n64 conns", "tcp64_rps", "http64_rps", 0.50},
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("diglett through each transport and the reference paths, ratio to direct (median of %d runs)", b.o.runs)
	p.Y.Label.Text = "× direct (higher is better)"
	p.Y.Min = 0
	p.Add(plotter.NewGrid())
	// The reference paths are drawn too, after the transports, so that each
	// group shows the floor beside the transports; a path without a figure
	// (library's bulk) has no bar there.
	ts := b.paths()
	colors := []color.Color{
		color.RGBA{0x1f, 0x77, 0xb4, 0xff},
		color.RGBA{0xff, 0x7f, 0x0e, 0xff},
		color.RGBA{0x2c, 0xa0, 0x2c, 0xff},
		color.RGBA{0xd6, 0x27, 0x28, 0xff},
	}
	refColors := map[string]color.Color{
		refLibrary: color.RGBA{0x94, 0x67, 0xbd, 0xff},
		refFloor:   color.RGBA{0x8c, 0x56, 0x4b, 0xff},
		refCluster: color.RGBA{0x7f, 0x7f, 0x7f, 0xff},
	}
	n := len(ts) + 1
	width := vg.Points(18)
	ymax := 1.0
	for i := 0; i < n; i++ {
		vals := make(plotter.Values, len(groups))
		name := "target"
		fill := color.Color(color.Gray{0xb0})
		for j, g := range groups {
			if i < len(ts) {
				_, r, ok := b.figure(ts[i], g.key, g.dkey)
				if ok && !math.IsNaN(r) {
					vals[j] = r
				}
			} else {
				vals[j] = g.target
			}
			ymax = math.Max(ymax, vals[j])
		}
		if i < len(ts) {
			name = ts[i]
			fill = colors[i%len(colors)]
			if c, ok := refColors[name]; ok {
				fill = c
			}
		}
		bars, err := plotter.NewBarChart(vals, width)
		if err != nil {
			return err
		}
		bars.Color = fill
		bars.LineStyle.Width = 0
		bars.Offset = width * vg.Length(float64(i)-float64(n-1)/2)
		p.Add(bars)
		p.Legend.Add(name, bars)
	}
	var labels []string
	for _, g := range groups {
		labels = append(labels, g.label)
	}
	return saveBars(p, labels, math.Ceil(ymax*10)/10+0.05, path)
}

// saveBars finishes a chart of bars in groups named labels (the legend at
// the top left, the y axis up to ymax) and writes it to path.
func saveBars(p *plot.Plot, labels []string, ymax float64, path string) error {
	p.Y.Max = ymax
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.XOffs = vg.Points(10)
	p.NominalX(labels...)
	p.X.Min = -0.6
	p.X.Max = float64(len(labels)) - 0.4
	return p.Save(9*vg.Inch, 5*vg.Inch, path)
}

// refs lists the measured reference paths, in column order.
func (b *bench) refs() []string {
	var rs []string
	for _, t := range b.targets[1:] {
		if b.o.refs[t.name] {
			rs = append(rs, t.name)
		}
	}
	return rs
}

// orNone joins ss with commas, or says "none".
func orNone(ss []string) string {
	if len(ss) == 0 {
		return "none"
	}
	return strings.Join(ss, ", ")
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func verdict(pass bool) string {
	if pass {
		return "pass"
	}
	return "**FAIL**"
}

func num(v float64, digits int) string {
	if digits == 0 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.*f", digits, v)
}

func cmdOut(name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}

// cmdOutAll is cmdOut for programs that print their version on stderr
// with a non-zero exit.
func cmdOutAll(name string, args ...string) string {
	out, _ := exec.Command(name, args...).CombinedOutput()
	return strings.TrimSpace(string(out))
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

func cpuModel() string {
	for _, l := range strings.Split(readTrim("/proc/cpuinfo"), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func commit() string {
	c := cmdOut("git", "rev-parse", "--short", "HEAD")
	st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output()
	switch {
	case err != nil:
		return c + " (dirty state unknown)"
	case len(strings.TrimSpace(string(st))) > 0:
		return fmt.Sprintf("%s, dirty (%d tracked files modified)", c, len(strings.Split(strings.TrimSpace(string(st)), "\n")))
	default:
		return c + ", clean"
	}
}
