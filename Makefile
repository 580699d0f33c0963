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
FUZZ_TARGETS := \
	./auth/basic:FuzzParseHash \
	./auth/external:FuzzAnswer \
	./auth/jwt:FuzzAuthenticate \
	./auth/jwt:FuzzParseFile \
	./auth/jwt/httpregistry:FuzzParseKeys \
	./catalog:FuzzParseTag \
	./catalog:FuzzParseValue \
	./cluster/link:FuzzHeader \
	./config:FuzzParse \
	./gateway:FuzzUnlistedConn \
	./ingress:FuzzChunkScanner \
	./ingress:FuzzParseRequest \
	./ingress:FuzzResponseHead \
	./ingress:FuzzTapResponse \
	./internal/cli:FuzzTextHandler \
	./internal/httpguard:FuzzScanner \
	./internal/inspect:FuzzObserve \
	./internal/printable:FuzzString \
	./internal/protocol:FuzzFlowDatagram \
	./internal/protocol:FuzzReadMessage \
	./internal/protocol:FuzzReadStreamHeader \
	./internal/transport/mux:FuzzSession \
	./portmap:FuzzPCPResponse
fuzz:
	set -e; for t in $(FUZZ_TARGETS); do \
		echo "fuzz: $${t#*:} in $${t%%:*}"; \
		$(GO) test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME) "$${t%%:*}"; \
	done

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
