#!/usr/bin/env bash
# Measures diglett against the direct path on loopback and writes
# bench/results.md and bench/results.png (see the doc comment of bench/).
# Installs wrk and iperf3 from Debian when missing, builds the release
# binaries, then runs the bench program.
#
# Environment: BENCH_RUNS (3), BENCH_SECS (5, per wrk/iperf3 run),
# BENCH_LATENCY_SECS (10), BENCH_SESSIONS (1000, idle sessions for the
# memory figure; 0 skips it), BENCH_TRANSPORTS (tcp,quic,ws), BENCH_REFS
# (floor,library,cluster: the reference paths measured beside the transports;
# empty for none), BENCH_ONLY (a subset of
# bulk,http,close,hol,latency,memory,streams,visitors), BENCH_LOGS (a
# directory to keep the processes' logs in), BENCH_BEFORE (a results.md of
# an earlier run shown as the "before" of the issue-17 targets and the
# chart; bench/before.md when unset and present, empty for none).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
GO=${GO:-go}

missing=()
for tool in wrk iperf3; do
	command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
# The cluster reference path runs its own etcd.
if [[ ",${BENCH_REFS-floor,library,cluster}," == *,cluster,* ]] && ! command -v etcd >/dev/null 2>&1; then
	missing+=(etcd-server)
fi
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "bench: installing ${missing[*]} from Debian" >&2
		export DEBIAN_FRONTEND=noninteractive
		apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
			{ apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
	else
		echo "bench: missing ${missing[*]}: install them (apt-get install ${missing[*]}) and run again" >&2
		exit 1
	fi
fi
command -v "$GO" >/dev/null 2>&1 || { echo "bench: Go not found (looked for $GO in PATH)" >&2; exit 1; }

# Release binaries (make bench has built them already; this is quick then).
${MAKE:-make} --no-print-directory build GO="$GO" >/dev/null

# The memory figure opens 1,000 sessions from one process, and the streams
# and visitors figures hold 10,000 connections in the bench process, the
# gateway, the agent and the backend each (they inherit this limit; where
# the hard limit is lower, as in some containers, it is used if it is
# above 11,000, else the bench says so).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d)
pid=
cleanup() {
	if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

(cd bench && "$GO" build -o "$work/bench" .)

cmdline="./scripts/bench.sh"
if [ -n "${MAKELEVEL:-}" ]; then cmdline="make bench"; fi
for v in BENCH_RUNS BENCH_SECS BENCH_LATENCY_SECS BENCH_SESSIONS BENCH_TRANSPORTS BENCH_REFS BENCH_ONLY; do
	if [ -n "${!v:-}" ]; then cmdline="$v=${!v} $cmdline"; fi
done
if [ -n "${BENCH_REFS+set}" ] && [ -z "$BENCH_REFS" ]; then cmdline="BENCH_REFS= $cmdline"; fi

# The baseline: bench/before.md unless BENCH_BEFORE says otherwise; a file
# named explicitly must exist (the bench program fails on it otherwise).
if [ -n "${BENCH_BEFORE+set}" ]; then
	before=$BENCH_BEFORE
	cmdline="BENCH_BEFORE=$BENCH_BEFORE $cmdline"
elif [ -f bench/before.md ]; then
	before=bench/before.md
else
	before=
fi

"$work/bench" -bin bin -out bench \
	-runs "${BENCH_RUNS:-3}" \
	-secs "${BENCH_SECS:-5}" \
	-latency-secs "${BENCH_LATENCY_SECS:-10}" \
	-sessions "${BENCH_SESSIONS:-1000}" \
	-transports "${BENCH_TRANSPORTS:-tcp,quic,ws}" \
	-refs "${BENCH_REFS-floor,library,cluster}" \
	-only "${BENCH_ONLY:-}" \
	-logs "${BENCH_LOGS:-}" \
	-before "$before" \
	-command "$cmdline" &
pid=$!
wait "$pid"
status=$?
pid=
exit "$status"
