#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine: Go's module
# dependencies, a C compiler for the race detector, and the programs the
# end-to-end tests run: pebble (ACME test server), tinyproxy (HTTP forward
# proxy), iptables (blocked ports), etcd (the etcd identity registry),
# an authoritative DNS server with dig (DNS updates and DNS-01) and nginx
# (a backend reading PROXY protocol headers).
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
if ! command -v "$GO" >/dev/null 2>&1; then
	echo "test-deps: Go is not installed (expected at /usr/local/go/bin/go)" >&2
	exit 1
fi
if ! command -v gcc >/dev/null 2>&1; then
	echo "test-deps: installing gcc for the race detector"
	apt-get update -qq && apt-get install -y -qq gcc libc6-dev
fi
if ! command -v pebble >/dev/null 2>&1; then
	echo "test-deps: installing pebble, the ACME test server"
	apt-get update -qq && apt-get install -y -qq pebble
fi
if ! command -v tinyproxy >/dev/null 2>&1; then
	# The WebSocket transport's tests start their own instance; the
	# system service the package may start is not used.
	echo "test-deps: installing tinyproxy, the HTTP forward proxy for tests"
	apt-get update -qq && apt-get install -y -qq tinyproxy
fi
if ! command -v iptables >/dev/null 2>&1; then
	# The transport fallback tests block the agent port on loopback; the
	# firewall package's tests run its iptables backend (iptables and
	# ip6tables) in network namespaces.
	echo "test-deps: installing iptables, for the firewall rules of the fallback and firewall tests"
	apt-get update -qq && apt-get install -y -qq iptables
fi
if ! command -v etcd >/dev/null 2>&1; then
	# The etcd identity registry's tests start their own member on
	# loopback; the system service the package may start is not used.
	echo "test-deps: installing etcd, for the etcd identity registry's tests"
	apt-get update -qq && apt-get install -y -qq etcd-server
fi
if ! command -v caddy >/dev/null 2>&1; then
	# The caddy registerer's tests start their own instance on loopback
	# (admin API and HTTP port of their own, never the trust store); the
	# system service the package may start is not used.
	echo "test-deps: installing caddy, for the caddy registerer's tests"
	apt-get update -qq && apt-get install -y -qq caddy
fi
for sh in zsh fish; do
	if ! command -v "$sh" >/dev/null 2>&1; then
		# The completion tests check the scripts with each shell's parser.
		echo "test-deps: installing $sh, for the shell completion tests"
		apt-get update -qq && apt-get install -y -qq "$sh"
	fi
done
if ! command -v promtool >/dev/null 2>&1; then
	# The metrics tests check the gateway's /metrics with its checker; the
	# system service the package may start is not used.
	echo "test-deps: installing prometheus, for promtool in the metrics tests"
	apt-get update -qq && apt-get install -y -qq prometheus
fi
if ! command -v chromium >/dev/null 2>&1; then
	# The page tests (the agent's request inspector) drive a headless
	# browser; each test starts its own, with a profile of its own.
	echo "test-deps: installing chromium, the headless browser of the page tests"
	apt-get update -qq && apt-get install -y -qq chromium
fi
if ! command -v miniupnpd >/dev/null 2>&1 || ! command -v upnpc >/dev/null 2>&1 ||
	! command -v natpmpc >/dev/null 2>&1 || ! command -v nft >/dev/null 2>&1; then
	# The port mapping tests run their own router daemon (nftables build)
	# in network namespaces and check it with the UPnP and NAT-PMP client
	# programs; the system service the package may start is not used, and
	# its configuration questions keep their defaults. The firewall
	# package's tests make their host firewalls with nft.
	echo "test-deps: installing miniupnpd, upnpc and natpmpc, for the port mapping tests"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		miniupnpd miniupnpd-nftables miniupnpc natpmpc nftables
fi
if ! { command -v named >/dev/null 2>&1 || [ -x /usr/sbin/named ]; } || ! command -v dig >/dev/null 2>&1; then
	# The DNS update and DNS-01 tests run their own authoritative server
	# (a zone and a key per test, files in a temporary directory, a free
	# loopback port) and check the records with dig; the UDP tunnel tests
	# ask one through a tunnel with dig. The system service the package
	# may start is not used.
	echo "test-deps: installing bind9 and dig, for the DNS update and UDP tunnel tests"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bind9 bind9-dnsutils
fi
if ! { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; }; then
	# The PROXY protocol tests run their own nginx (one process, files in
	# a temporary directory, a free loopback port) as a backend that
	# reads the header and logs the address in it; the system service the
	# package may start is not used.
	echo "test-deps: installing nginx, the backend of the PROXY protocol tests"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx
fi
if ! command -v curl >/dev/null 2>&1; then
	# The home gateway's test plays a visitor on the internet side of its
	# router namespace with curl.
	echo "test-deps: installing curl, the visitor of the home gateway test"
	apt-get update -qq && apt-get install -y -qq curl
fi
"$GO" mod download
