#!/usr/bin/env bash
# CPU and system calls of a gateway and agent pair under load, per 1,000
# requests or per GB: a figure that holds on a shared machine where
# throughput does not.
#
#   scripts/cost.sh BINDIR host64|tcp64|host1k|tcp1k|up|down [SECS]
#
# Starts BINDIR/diglett-server and BINDIR/diglett (tcp transport) and
# loads them: host64 and tcp64 put them in front of the benchmark's
# 100-byte backend under wrk -t2 -c64, by Host or through the tunnel's
# public port; host1k and tcp1k send the latency measurement's fixed
# 1,000 requests/s over 64 connections instead ("bench rate"), and also
# report its p50 and p99 and the context switches per request; up and
# down put them in front of iperf3 -s and run one iperf3 stream through
# the port, from the visitor to the backend (up) or back (down). perf
# stat counts both processes for SECS seconds (default 3): the CPU of
# both and of each, and the system calls of both. With
# ALLOCS=1, each process's count of heap allocations (the runtime's, read
# from its profiling endpoint before and after) gives its allocations per
# request or per MB; the gateway then runs with a management listener,
# which turns on its dashboard, so compare CPU figures with ALLOCS set
# alike. Needs wrk or iperf3, perf, and curl for ALLOCS. Uses 127.0.0.1
# ports 20900-20960: run one at a time. To compare two builds, alternate
# them a few times and compare medians.
set -euo pipefail
BIN=$1
MODE=$2
SECS=${3:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
GO=${GO:-go}
case $MODE in
host64 | tcp64) LOAD=wrk ;;
host1k | tcp1k) LOAD=rate ;;
up | down) LOAD=iperf3 ;;
*) echo "mode: host64, tcp64, host1k, tcp1k, up or down" >&2; exit 2 ;;
esac
ALLOCS=${ALLOCS:-}
GWMGMT=()
AGMGMT=()
TOOLS="perf"
[ "$LOAD" = rate ] || TOOLS="$LOAD $TOOLS"
if [ -n "$ALLOCS" ]; then
	GWMGMT=(--admin-addr 127.0.0.1:20903)
	AGMGMT=(--debug-addr 127.0.0.1:20904)
	TOOLS="$TOOLS curl"
fi
for tool in $TOOLS; do
	command -v $tool >/dev/null || { echo "cost.sh: $tool is not installed" >&2; exit 1; }
done
TOOL=$ROOT/bin/benchtool
[ -x "$TOOL" ] || (cd "$ROOT/bench" && $GO build -o "$TOOL" .)
D=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
if [ "$LOAD" != iperf3 ]; then
	"$TOOL" backend 127.0.0.1:20900 >"$D/backend.log" 2>&1 &
else
	iperf3 -s -B 127.0.0.1 -p 20900 >"$D/backend.log" 2>&1 &
fi
"$BIN/diglett-server" -l 127.0.0.1:20901 --data-dir "$D/gw" --public-bind 127.0.0.1 --ports 20950-20960 \
	--domain gw.test --http-addr 127.0.0.1:20902 "${GWMGMT[@]}" >"$D/gateway.log" 2>&1 &
GW=$!
waitfor() { # waitfor FILE PATTERN
	for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return; sleep 0.1; done
	echo "cost.sh: no '$2' in $1:" >&2; cat "$1" >&2; exit 1
}
waitfor "$D/gateway.log" fingerprint
"$BIN/diglett" -g 127.0.0.1:20901 --transport tcp --known-gateways "$D/kg" -n web "${AGMGMT[@]}" \
	127.0.0.1:20900 >"$D/agent.log" 2>&1 &
AG=$!
waitfor "$D/agent.log" "web: http://"
PORTURL=$(grep -o "web: tcp://[^ ]*" "$D/agent.log" | sed 's|.*tcp://||')
case $MODE in
host64 | host1k)
	URL=http://127.0.0.1:20902/
	H=(-H "Host: web.gw.test")
	RATE=(127.0.0.1:20902 web.gw.test)
	;;
tcp64 | tcp1k)
	URL=http://$PORTURL/
	H=()
	RATE=("$PORTURL" "$PORTURL")
	;;
esac
if [ "$LOAD" = rate ]; then
	# Its first second is a warm-up it does not record.
	"$TOOL" rate "${RATE[@]}" 1000 $((SECS + 1)) >"$D/load.log" 2>&1 &
elif [ "$LOAD" = wrk ]; then
	wrk -t2 -c64 -d1s "${H[@]}" "$URL" >/dev/null # warm up
	wrk -t2 -c64 -d$((SECS + 2))s "${H[@]}" "$URL" >"$D/load.log" &
else
	R=()
	[ "$MODE" = down ] && R=(-R)
	iperf3 -c 127.0.0.1 -p "${PORTURL##*:}" -t $((SECS + 2)) "${R[@]}" >"$D/load.log" 2>&1 &
fi
W=$!
sleep 1 # into the measured run
# The runtime's count of heap allocations of the process whose profiling
# endpoint is on port $1 (the gateway's admin, the agent's debug).
mallocs() {
	if [ -n "$ALLOCS" ]; then
		curl -sf "http://127.0.0.1:$1/debug/pprof/heap?debug=1" | awk '/^# Mallocs = / { print $4 }'
	else
		echo 0
	fi
}
GM0=$(mallocs 20903)
AM0=$(mallocs 20904)
# The CPU of each process, and the system calls of both.
perf stat -x, -e task-clock -p "$GW" -- sleep "$SECS" 2>"$D/gateway.perf" &
PG=$!
perf stat -x, -e task-clock -p "$AG" -- sleep "$SECS" 2>"$D/agent.perf" &
PA=$!
perf stat -x, -e task-clock,context-switches,syscalls:sys_enter_write,syscalls:sys_enter_read,syscalls:sys_enter_recvmsg,syscalls:sys_enter_futex \
	-p "$GW,$AG" -- sleep "$SECS" 2>"$D/perf.log"
GM=$(($(mallocs 20903) - GM0))
AM=$(($(mallocs 20904) - AM0))
wait $W $PG $PA
cpu() { awk -F, '$3 == "task-clock" { print $1 }' "$1"; }
if [ "$LOAD" != iperf3 ]; then
	if [ "$LOAD" = rate ]; then
		RPS=1000
		LAT=$(awk '/^requests/ { printf ", p50 %s ms, p99 %s ms", $6, $9 }' "$D/load.log")
		[ -n "$LAT" ] || { echo "cost.sh: no figures from the fixed-rate load:" >&2; cat "$D/load.log" >&2; exit 1; }
	else
		RPS=$(awk '/Requests\/sec/ {print $2}' "$D/load.log")
		LAT=
	fi
	# The fixed-rate modes add the load's percentiles and the context switches.
	awk -F, -v rps="$RPS" -v lat="$LAT" -v secs="$SECS" -v mode="$MODE" -v gw="$(cpu "$D/gateway.perf")" -v ag="$(cpu "$D/agent.perf")" -v gm="$GM" -v am="$AM" -v allocs="$ALLOCS" \
		'BEGIN { k = rps * secs / 1000 } { v[$3] = $1 }
	END { a = allocs == "" ? "" : sprintf(", allocations gateway %.1f agent %.1f", gm / k / 1000, am / k / 1000)
		cs = lat == "" ? "" : sprintf(" context switches %.2f", v["context-switches"] / k / 1000)
		printf "%s: %.0f req/s%s, CPU %.1f ms per 1,000 requests (gateway %.1f, agent %.1f); per request: write %.2f read %.2f (read and recvmsg) futex %.2f%s%s\n",
		mode, rps, lat, v["task-clock"] / k, gw / k, ag / k, v["syscalls:sys_enter_write"] / k / 1000, (v["syscalls:sys_enter_read"] + v["syscalls:sys_enter_recvmsg"]) / k / 1000, v["syscalls:sys_enter_futex"] / k / 1000, cs, a }' "$D/perf.log"
else
	# The stream's rate over the whole run, as the receiver counted it.
	GBITS=$(awk '/receiver/ { for (i = 1; i < NF; i++) if ($(i + 1) == "Gbits/sec") print $i }' "$D/load.log")
	[ -n "$GBITS" ] || { echo "cost.sh: no rate from iperf3:" >&2; cat "$D/load.log" >&2; exit 1; }
	awk -F, -v gbits="$GBITS" -v secs="$SECS" -v mode="$MODE" -v gw="$(cpu "$D/gateway.perf")" -v ag="$(cpu "$D/agent.perf")" -v gm="$GM" -v am="$AM" -v allocs="$ALLOCS" \
		'BEGIN { k = gbits / 8 * secs } { v[$3] = $1 }
	END { a = allocs == "" ? "" : sprintf(", allocations gateway %.1f agent %.1f", gm / k / 1000, am / k / 1000)
		printf "%s: %.2f Gbit/s, CPU %.0f ms per GB (gateway %.0f, agent %.0f); per MB: write %.1f read %.1f (read and recvmsg) futex %.2f%s\n",
		mode, gbits, v["task-clock"] / k, gw / k, ag / k, v["syscalls:sys_enter_write"] / k / 1000, (v["syscalls:sys_enter_read"] + v["syscalls:sys_enter_recvmsg"]) / k / 1000, v["syscalls:sys_enter_futex"] / k / 1000, a }' "$D/perf.log"
fi
