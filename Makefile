# diglett — see README.md.
export PATH := $(PATH):/usr/local/go/bin
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -s -w -X github.com/diglett/diglett/internal/cli.Version=$(VERSION) -X github.com/diglett/diglett/internal/cli.Commit=$(COMMIT)

.PHONY: all build release install demo test fuzz bench soak clean

all: build

# Static release binaries in bin/.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ ./cmd/diglett ./cmd/diglett-server ./examples/hello

# Static binaries for every platform in dist/, with SHA256SUMS:
# dist/diglett_VERSION_OS_ARCH/{diglett,diglett-server}[.exe].
RELEASE_PLATFORMS ?= linux/amd64 linux/arm64 linux/arm/7 darwin/amd64 darwin/arm64 windows/amd64
release:
	rm -rf dist && mkdir -p dist
	set -e; for p in $(RELEASE_PLATFORMS); do \
		os=$${p%%/*}; rest=$${p#*/}; arch=$${rest%%/*}; arm=; \
		case $$rest in */*) arm=$${rest#*/};; esac; \
		ext=; [ $$os = windows ] && ext=.exe; \
		dir=dist/diglett_$(VERSION)_$${os}_$${arch}$${arm:+v$$arm}; mkdir -p $$dir; \
		for cmd in diglett diglett-server; do \
			echo "release: $$dir/$$cmd$$ext"; \
			CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch GOARM=$$arm $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $$dir/$$cmd$$ext ./cmd/$$cmd; \
		done; \
	done
	cd dist && find . -type f ! -name SHA256SUMS | sed 's#^\./##' | LC_ALL=C sort | xargs sha256sum > SHA256SUMS
	@echo "release: dist/SHA256SUMS"

# Installs the binaries in $(DESTDIR)$(PREFIX)/bin (default /usr/local/bin);
# the service units are in packaging/ (see README.md, Install).
PREFIX ?= /usr/local
install: build
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 bin/diglett bin/diglett-server $(DESTDIR)$(PREFIX)/bin/

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
	$(GO) test -run '^$$' -fuzz '^FuzzParseHash$$' -fuzztime $(FUZZTIME) ./auth/basic
	$(GO) test -run '^$$' -fuzz '^FuzzAnswer$$' -fuzztime $(FUZZTIME) ./auth/external
	$(GO) test -run '^$$' -fuzz '^FuzzAuthenticate$$' -fuzztime $(FUZZTIME) ./auth/jwt
	$(GO) test -run '^$$' -fuzz '^FuzzParseFile$$' -fuzztime $(FUZZTIME) ./auth/jwt
	$(GO) test -run '^$$' -fuzz '^FuzzParseKeys$$' -fuzztime $(FUZZTIME) ./auth/jwt/httpregistry
	$(GO) test -run '^$$' -fuzz '^FuzzParseTag$$' -fuzztime $(FUZZTIME) ./catalog
	$(GO) test -run '^$$' -fuzz '^FuzzParseValue$$' -fuzztime $(FUZZTIME) ./catalog
	$(GO) test -run '^$$' -fuzz '^FuzzHeader$$' -fuzztime $(FUZZTIME) ./cluster/link
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./config
	$(GO) test -run '^$$' -fuzz '^FuzzUnlistedConn$$' -fuzztime $(FUZZTIME) ./gateway
	$(GO) test -run '^$$' -fuzz '^FuzzChunkScanner$$' -fuzztime $(FUZZTIME) ./ingress
	$(GO) test -run '^$$' -fuzz '^FuzzResponseHead$$' -fuzztime $(FUZZTIME) ./ingress
	$(GO) test -run '^$$' -fuzz '^FuzzScanner$$' -fuzztime $(FUZZTIME) ./internal/httpguard
	$(GO) test -run '^$$' -fuzz '^FuzzObserve$$' -fuzztime $(FUZZTIME) ./internal/inspect
	$(GO) test -run '^$$' -fuzz '^FuzzString$$' -fuzztime $(FUZZTIME) ./internal/printable
	$(GO) test -run '^$$' -fuzz '^FuzzFlowDatagram$$' -fuzztime $(FUZZTIME) ./internal/protocol
	$(GO) test -run '^$$' -fuzz '^FuzzReadMessage$$' -fuzztime $(FUZZTIME) ./internal/protocol
	$(GO) test -run '^$$' -fuzz '^FuzzReadStreamHeader$$' -fuzztime $(FUZZTIME) ./internal/protocol
	$(GO) test -run '^$$' -fuzz '^FuzzSession$$' -fuzztime $(FUZZTIME) ./internal/transport/mux
	$(GO) test -run '^$$' -fuzz '^FuzzPCPResponse$$' -fuzztime $(FUZZTIME) ./portmap

# Measure diglett against the direct path; writes bench/results.md and
# bench/results.png (BENCH_RUNS=1 for a quick run, see scripts/bench.sh).
bench: build
	./scripts/bench.sh

# SOAK_DURATION (1h) of mixed traffic with agents and the gateway restarted
# at random; not part of test (see scripts/soak.sh).
soak:
	GO=$(GO) ./scripts/soak.sh

clean:
	rm -rf bin dist
