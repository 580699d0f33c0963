#!/usr/bin/env bash
# Runs a gateway, an agent and a sample backend on loopback, prints the
# public address, fetches a page through the tunnel, and keeps running until
# Ctrl-C. DEMO_ONCE=1 exits after the fetch (used by the tests).
set -euo pipefail
cd "$(dirname "$0")/.."

GATEWAY_ADDR=${GATEWAY_ADDR:-127.0.0.1:20000}
BACKEND_ADDR=${BACKEND_ADDR:-127.0.0.1:9000}
HTTP_ADDR=${HTTP_ADDR:-127.0.0.1:8080}
# *.localhost names resolve to this machine, so the tunnel's URL works in a
# browser on it.
DOMAIN=${DOMAIN:-localhost}
BIN=${BIN:-bin}

work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

for b in diglett diglett-server hello; do
	if [ ! -x "$BIN/$b" ]; then
		echo "demo: no $BIN/$b: build the binaries first (make build puts them in bin/)" >&2
		exit 1
	fi
done
echo "binaries: $BIN/diglett-server (gateway), $BIN/diglett (agent), $BIN/hello (sample backend)"

# wait_for FILE PATTERN WHAT PID [LOG]: waits for PATTERN in FILE; if the
# process PID ends first (a port taken, say), fails at once with its log.
wait_for() {
	for _ in $(seq 1 100); do
		grep -q "$2" "$1" 2>/dev/null && return 0
		if ! kill -0 "$4" 2>/dev/null; then
			echo "demo: $3 stopped at start:" >&2
			cat "$1" ${5:+"$5"} >&2
			echo "demo: for other ports, set GATEWAY_ADDR, HTTP_ADDR or BACKEND_ADDR, e.g. make demo GATEWAY_ADDR=127.0.0.1:20100" >&2
			exit 1
		fi
		sleep 0.1
	done
	echo "demo: $3 did not start; its log:" >&2
	cat "$1" ${5:+"$5"} >&2
	exit 1
}

"$BIN/hello" -listen "$BACKEND_ADDR" >"$work/backend.log" 2>&1 &
pids+=($!)
wait_for "$work/backend.log" "hello backend" "the sample backend (BACKEND_ADDR=$BACKEND_ADDR)" "$!"

"$BIN/diglett-server" -l "$GATEWAY_ADDR" --data-dir "$work/gateway" --public-bind 127.0.0.1 \
	--domain "$DOMAIN" --http-addr "$HTTP_ADDR" \
	>"$work/gateway.out" 2>"$work/gateway.log" &
pids+=($!)
wait_for "$work/gateway.out" "fingerprint" "the gateway (GATEWAY_ADDR=$GATEWAY_ADDR, HTTP_ADDR=$HTTP_ADDR)" "$!" "$work/gateway.log"

"$BIN/diglett" -g "$GATEWAY_ADDR" -n example --known-gateways "$work/known_gateways" "$BACKEND_ADDR" \
	>"$work/agent.out" 2>"$work/agent.log" &
pids+=($!)
wait_for "$work/agent.out" "tcp://" "the agent" "$!" "$work/agent.log"

url=$(grep -o 'http://[^ ]*' "$work/agent.out" | head -n1)
tcpurl=$(grep -o 'tcp://[^ ]*' "$work/agent.out" | head -n1)
hostport=${url#http://}
echo "gateway:  $GATEWAY_ADDR ($(grep fingerprint "$work/gateway.out"))"
echo "gateway log: $(grep -o "register domain '[^']*' -> '[0-9]*'" "$work/gateway.log")"
echo "backend:  http://$BACKEND_ADDR"
echo "public URL: $url"
echo "public TCP address: $tcpurl"
echo
echo "fetching $url/ through the tunnel:"
host=${HTTP_ADDR%:*} port=${HTTP_ADDR##*:}
exec 3<>"/dev/tcp/$host/$port"
printf 'GET / HTTP/1.0\r\nHost: %s\r\n\r\n' "$hostport" >&3
page=$(cat <&3)
exec 3<&-
printf '%s\n' "$page" | sed 's/\r$//'
printf '%s' "$page" | grep -q "Hello from behind the NAT" || { echo "demo: the page did not come through the tunnel" >&2; exit 1; }
echo
if [ "${DEMO_ONCE:-}" = 1 ]; then exit 0; fi
echo "The tunnel is up: try  curl $url/  (Ctrl-C to stop)"
wait
