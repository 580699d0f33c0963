# diglett — see README.md.
export PATH := $(PATH):/usr/local/go/bin
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/diglett/diglett/internal/cli.Version=$(VERSION)

.PHONY: all build demo test fuzz bench soak clean

all: build

# Static release binaries in bin/.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ ./cmd/diglett ./cmd/diglett-server ./examples/hello

# A gateway, an agent and a sample backend on loopback; Ctrl-C stops it.
demo: build
	./scripts/demo.sh

# The whole test suite, after installing what it needs.
test:
	GO=$(GO) ./scripts/test-deps.sh
	$(GO) vet ./...
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /internal/faults)
	@mkdir -p bin
	FAULTS_REPORT=$(CURDIR)/bin/faults.txt $(GO) test -race -count=1 ./internal/faults
	@cat bin/faults.txt

# Run each fuzz target for FUZZTIME (the normal suite runs only the seeds).
FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzReadMessage$$' -fuzztime $(FUZZTIME) ./internal/protocol
	$(GO) test -run '^$$' -fuzz '^FuzzReadStreamHeader$$' -fuzztime $(FUZZTIME) ./internal/protocol

# Measure diglett against the direct path; writes bench/results.md and
# bench/results.png (BENCH_RUNS=1 for a quick run, see scripts/bench.sh).
bench: build
	./scripts/bench.sh

# SOAK_DURATION (1h) of mixed traffic with agents and the gateway restarted
# at random; not part of test (see scripts/soak.sh).
soak:
	GO=$(GO) ./scripts/soak.sh

clean:
	rm -rf bin
