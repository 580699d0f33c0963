// Command bench measures diglett against the direct path on loopback, with
// the real release binaries, and writes bench/results.md and
// bench/results.png.
//
// It starts a direct backend (a Go HTTP server answering 100 bytes, with
// keep-alive) and an iperf3 server, a gateway (bin/diglett-server) and, per
// transport (tcp, quic, ws), one agent (bin/diglett) publishing the HTTP
// backend and one publishing the iperf3 server. Then, in every run, each
// workload is measured on the direct path and through each transport one
// after the other, so that the ratios to direct come from the same minutes
// of a shared machine:
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
// The same binary serves as the direct backend: "bench backend ADDR".
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
	bin         string   // directory holding diglett and diglett-server
	out         string   // where results.md and results.png go
	runs        int      // runs per figure; medians are quoted
	secs        int      // seconds per wrk or iperf3 measurement
	latSecs     int      // seconds per fixed-rate latency measurement
	rate        int      // requests/s of the latency measurement
	sessions    int      // idle agent sessions for the memory figure
	transports  []string // transports measured
	portsMain   string   // public port range of the main gateway
	portsMem    string   // public port range of the memory gateway
	command     string   // the command line recorded in the results
	keepLogs    string   // directory for the processes' logs
	only        map[string]bool
	stepTimeout time.Duration // bound on one external tool run beyond its duration
}

func main() {
	if len(os.Args) == 3 && os.Args[1] == "backend" {
		if err := runBackend(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "bench backend:", err)
			os.Exit(1)
		}
		return
	}
	var o options
	var transports, only string
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
	flag.StringVar(&o.command, "command", strings.Join(os.Args, " "), "command line recorded in results.md")
	flag.StringVar(&o.keepLogs, "logs", "", "directory for the processes' logs (default: a temporary one, removed)")
	flag.StringVar(&only, "only", "", "comma-separated subset of bulk,http,close,hol,latency,memory,streams,visitors (default: all)")
	flag.Parse()
	o.transports = strings.Split(transports, ",")
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

func (o *options) want(step string) bool { return o.only == nil || o.only[step] }
