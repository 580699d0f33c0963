// Command bench measures diglett against the direct path on loopback, with
// the real release binaries, and writes bench/results.md, bench/results.json
// (every figure's median and ratio by path and key, with the run's
// metadata) and bench/results.png.
//
// With -before FILE (scripts/bench.sh passes bench/before.md, the run kept
// as the baseline), the report opens with the targets of issue 17, each
// with the figure before (read back from FILE's "Figures" and idle-session
// memory tables) and after, and the chart shows the tcp transport's main
// ratios before and after beside the floor's, with the targets.
//
// It starts a direct backend (a Go HTTP server answering 100 bytes, with
// keep-alive) and an iperf3 server, a gateway (bin/diglett-server) and, per
// transport (tcp, quic, ws), one agent (bin/diglett) publishing the HTTP
// backend and one publishing the iperf3 server. Then, in every run, each
// workload is measured on the direct path and through each transport one
// after the other, so that the ratios to direct come from the same minutes
// of a shared machine. Two reference paths are measured beside them
// (-refs): "library", the app itself serving HTTP on diglett.Listen (TLS
// over TCP) with no agent process, and "floor", two chained plain TCP
// relay processes with no encryption and no multiplexing in front of the
// backend and the iperf3 server, the cheapest two-process path:
//
//   - bulk TCP through the tunnel's public TCP port with iperf3: 1 and 8
//     streams, visitor to backend and back (-R), Gbit/s;
//   - small HTTP responses with wrk at 64 and 256 keep-alive connections,
//     through the HTTP ingress (routed by Host) and through the public TCP
//     port: requests/s, p50 and p99;
//   - a new connection per request (wrk with "Connection: close"):
//     connections/s;
//   - latency at a fixed 1,000 requests/s over 64 keep-alive connections
//     (an open-loop generator in this program, HDR histograms): p50 and p99
//     and what the tunnel adds to them;
//   - head-of-line ("hol"): 8 visitors downloading an endless body
//     (GET /stream) through the public TCP port, aggregate rate without and
//     with a 9th visitor that stops reading its own download;
//
// and once, against a fresh gateway, the gateway's resident memory with
// 1,000 idle agent sessions opened from this process with diglett.Listen;
// then, each against a fresh gateway and tcp agent, the gateway's memory
// per idle stream with 10,000 connections held open through the public TCP
// port ("streams"), and 10,000 concurrent keep-alive visitors by Host and
// through the public TCP port, two requests each ("visitors").
// Every figure is the median over the runs, and so is its ratio to direct
// (the ratio is taken within each run).
//
// It is started by scripts/bench.sh (make bench), which installs wrk and
// iperf3 and builds the binaries; run from the bench directory:
//
//	go run . -bin ../bin -out . -runs 3
//
// The same binary serves as the direct backend, "bench backend ADDR", as
// the floor's relays, "bench relay TARGET...", as the library's app,
// "bench libbackend GATEWAY FINGERPRINT NAME KNOWN_GATEWAYS_FILE", and as
// the fixed-rate load of scripts/cost.sh, "bench rate ADDR HOST RATE SECS".
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

type options struct {
	bin          string   // directory holding diglett and diglett-server
	out          string   // where results.md and results.png go
	runs         int      // runs per figure; medians are quoted
	secs         int      // seconds per wrk or iperf3 measurement
	latSecs      int      // seconds per fixed-rate latency measurement
	rate         int      // requests/s of the latency measurement
	sessions     int      // idle agent sessions for the memory figure
	transports   []string // transports measured
	portsMain    string   // public port range of the main gateway
	portsMem     string   // public port range of the memory gateway
	portsCluster string   // public port range of the cluster reference's nodes
	command      string   // the command line recorded in the results
	keepLogs     string   // directory for the processes' logs
	before       string   // a results.md of an earlier run to compare with (bench/before.md)
	only         map[string]bool
	refs         map[string]bool // reference paths measured: floor, library
	stepTimeout  time.Duration   // bound on one external tool run beyond its duration
}

func main() {
	if len(os.Args) > 1 && subcommand(os.Args[1], os.Args[2:]) {
		return
	}
	var o options
	var transports, only, refs string
	flag.StringVar(&o.bin, "bin", "bin", "directory of the release binaries diglett and diglett-server")
	flag.StringVar(&o.out, "out", "bench", "directory for results.md and results.png")
	flag.IntVar(&o.runs, "runs", 3, "runs of every measurement (medians are quoted)")
	flag.IntVar(&o.secs, "secs", 5, "seconds per wrk and iperf3 measurement")
	flag.IntVar(&o.latSecs, "latency-secs", 10, "seconds per fixed-rate latency measurement")
	flag.IntVar(&o.rate, "rate", 1000, "requests/s of the fixed-rate latency measurement")
	flag.IntVar(&o.sessions, "sessions", 1000, "idle agent sessions for the memory figure (0: skip)")
	flag.StringVar(&transports, "transports", "tcp,quic,ws", "transports to measure")
	flag.StringVar(&o.portsMain, "ports", "21000-21999", "public port range of the gateway (keep it out of the ephemeral range)")
	flag.StringVar(&o.portsMem, "mem-ports", "22000-23999", "public port range of the memory gateway (more than -sessions ports)")
	flag.StringVar(&o.portsCluster, "cluster-ports", "24000-24099", "public port range of the cluster reference's two nodes")
	flag.StringVar(&o.command, "command", strings.Join(os.Args, " "), "command line recorded in results.md")
	flag.StringVar(&o.keepLogs, "logs", "", "directory for the processes' logs (default: a temporary one, removed)")
	flag.StringVar(&o.before, "before", "", "results.md of an earlier run (bench/before.md) shown as the before of the issue-17 targets and the chart (empty: none)")
	flag.StringVar(&only, "only", "", "comma-separated subset of bulk,http,close,hol,latency,memory,streams,visitors (default: all)")
	flag.StringVar(&refs, "refs", "floor,library,cluster", "comma-separated reference paths to measure beside the transports: floor, library, cluster (empty: none)")
	flag.Parse()
	o.transports = strings.Split(transports, ",")
	o.refs = map[string]bool{}
	for _, r := range strings.Split(refs, ",") {
		switch r {
		case "":
		case refFloor, refLibrary, refCluster:
			o.refs[r] = true
		default:
			fmt.Fprintf(os.Stderr, "bench: -refs: unknown reference path %q (want floor, library, cluster)\n", r)
			os.Exit(2)
		}
	}
	o.stepTimeout = 60 * time.Second
	if only != "" {
		o.only = map[string]bool{}
		for _, s := range strings.Split(only, ",") {
			o.only[s] = true
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// subcommand runs the bench binary's helper programs (backend, relay,
// proxy, libbackend) and reports whether cmd and args named one; it exits on
// error.
func subcommand(cmd string, args []string) bool {
	var err error
	switch {
	case cmd == "backend" && len(args) == 1:
		err = runBackend(args[0])
	case cmd == "relay" && len(args) > 0:
		err = runRelay(args)
	case cmd == "proxy" && len(args) == 1:
		err = runProxy(args[0])
	case cmd == "libbackend" && len(args) == 4:
		err = runLibBackend(args[0], args[1], args[2], args[3])
	case cmd == "rate" && len(args) == 4:
		err = runRate(args[0], args[1], args[2], args[3])
	default:
		return false
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench %s: %v\n", cmd, err)
		os.Exit(1)
	}
	return true
}

// want reports whether step is to be measured (-only).
func (o *options) want(step string) bool { return o.only == nil || o.only[step] }
