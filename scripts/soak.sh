#!/usr/bin/env bash
# The soak test: SOAK_DURATION (default 1h) of mixed traffic (HTTP by
# host name and checksummed TCP transfers, a new connection per request)
# through agents over tcp, quic and ws, while agents and the gateway are
# restarted at random. Prints the gateway's and agents' goroutines and
# memory as it goes, and a table at the end; fails on an error the
# restarts do not explain or on growth (see internal/faults/soak_test.go).
#
#   SOAK_DURATION=3m ./scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
GO=${GO:-go}
export SOAK_DURATION=${SOAK_DURATION:-1h}
exec "$GO" test -tags soak -run '^TestSoak$' -count=1 -v -timeout 90m ./internal/faults
