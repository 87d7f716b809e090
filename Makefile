# pgveil — make test runs every test; make demo runs the demo.
GO ?= go
BIN := bin/pgveil
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: build test demo deps lint unit integration bench fuzz clean

build:
	$(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o $(BIN) .

# test installs whatever is missing, then runs the linters, the unit tests
# under the race detector, and the integration tests against real
# PostgreSQL and real clients (a missing client fails, never skips).
test: deps lint unit integration

deps:
	bash scripts/install-deps.sh
	bash scripts/install-browser.sh

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# unit covers every package but integration; rewrite, rules and catalog
# start their own PostgreSQL.
unit:
	PGVEIL_REQUIRE_ALL=1 $(GO) test -race -count=1 $$($(GO) list ./... | grep -v /integration)

# The integration suite runs twice: with the io_uring relay (the default
# where the kernel allows it; "on" fails if it does not) and without it.
integration:
	PGVEIL_IO_URING=on PGVEIL_REQUIRE_ALL=1 $(GO) test -race -count=1 -timeout 30m ./integration/...
	PGVEIL_IO_URING=off PGVEIL_REQUIRE_ALL=1 $(GO) test -race -count=1 -timeout 30m ./integration/...

demo: build
	./$(BIN) demo

bench: build
	PGVEIL_BIN=$(abspath $(BIN)) bash bench/run.sh

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzClientBytes -fuzztime 60s ./proxy

clean:
	rm -rf bin
