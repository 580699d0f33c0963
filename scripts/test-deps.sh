#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine: Go's module
# dependencies, a C compiler for the race detector, and pebble, the ACME
# test server.
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
"$GO" mod download
