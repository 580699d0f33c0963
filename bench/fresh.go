package main

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// freshRSS measures "gateway plus agent RSS under the 64-connection load"
// on a pair of its own: a fresh gateway and one fresh tcp agent publishing
// the direct backend, nothing else. The suite's shared gateway also holds
// every other path's agents and has served the bulk runs before the HTTP
// ones, so its peak RSS (kept as the "shared gateway" figures) says more
// about what ran before than about one tunnel under load. The pair serves
// the same two 64-connection wrk runs as the suite (by Host, then through
// the public TCP port), and the peak summed VmRSS, RssAnon and RssFile of
// the two processes are recorded for the tcp path under the keys
// host64_fresh_* and tcp64_fresh_*, with the pair's req/s beside them.
// It does nothing when tcp is not among the measured transports.
func (b *bench) freshRSS(ctx context.Context, res map[string]map[string]float64) error {
	if !slices.Contains(b.o.transports, "tcp") {
		return nil
	}
	tag := fmt.Sprintf("fresh%d", len(b.results))
	base := len(b.ps.list)
	sharedHTTP := b.gwHTTP
	defer func() {
		b.gwHTTP = sharedHTTP
		for i := len(b.ps.list) - 1; i >= base; i-- {
			b.ps.list[i].stop()
		}
		b.ps.list = b.ps.list[:base]
	}()
	// startGateway points b.gwHTTP at the new gateway's HTTP port.
	g, gwAddr, _, err := b.startGateway(ctx, "gateway-"+tag, b.o.portsMem, true)
	if err != nil {
		return err
	}
	httpAddr := b.gwHTTP
	b.gwHTTP = sharedHTTP
	args := []string{"-g", gwAddr, "--transport", "tcp", "--known-gateways", filepath.Join(b.logDir, "known_gateways-"+tag), "-n", tag, b.backend}
	agent, err := startProc(b.logDir, "agent-"+tag, filepath.Join(b.o.bin, "diglett"), args...)
	if err != nil {
		return err
	}
	b.ps.add(agent)
	m, err := agent.waitLines(30*time.Second, regexp.MustCompile(`^`+tag+`: tcp://(\S+) -> `), regexp.MustCompile(`^`+tag+`: http://(\S+) -> `))
	if err != nil {
		return err
	}
	tcpAddr := m[0][1]
	hostName, _, _ := strings.Cut(m[1][1], ":")
	if err := checkHTTP(ctx, tcpAddr, tcpAddr); err != nil {
		return err
	}
	if err := checkHTTP(ctx, httpAddr, hostName); err != nil {
		return err
	}
	ways := []struct {
		key, url string
		headers  []string
	}{
		{"host64", "http://" + httpAddr + "/", []string{"Host: " + hostName}},
		{"tcp64", "http://" + tcpAddr + "/", nil},
	}
	for _, w := range ways {
		stop := peakRSS(g.pid(), agent.pid())
		r, err := runWrk(ctx, b.o.secs, 64, w.url, w.headers...)
		peak := stop()
		if err != nil {
			return fmt.Errorf("%s: %w", w.key, err)
		}
		res["tcp"][w.key+"_fresh_rss"] = mb(peak.vm)
		res["tcp"][w.key+"_fresh_anon"] = mb(peak.anon)
		res["tcp"][w.key+"_fresh_file"] = mb(peak.file)
		res["tcp"][w.key+"_fresh_rps"] = r.rps
		b.errs["tcp "+w.key+" fresh"] += r.errors
		b.progress("%-7s %-8s fresh gateway + agent: %9.0f req/s, peak VmRSS %.1f MB (RssAnon %.1f MB, RssFile %.1f MB)",
			"tcp", w.key, r.rps, mb(peak.vm), mb(peak.anon), mb(peak.file))
	}
	if err := b.alive(); err != nil {
		return err
	}
	b.scanProcLogs([]*proc{g, agent})
	return nil
}
