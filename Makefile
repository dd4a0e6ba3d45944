# Shortcuts for the commands in the README; each works without make too.
# make help lists the targets.

GO ?= go
STATICCHECK ?= $(shell command -v staticcheck 2>/dev/null || echo $(shell $(GO) env GOPATH)/bin/staticcheck)

.PHONY: help test lint bench bench-compare run build ci

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-14s %s\n", $$1, $$2}'

run: ## run everything in one process with no setup (keepwatch dev)
	$(GO) run ./cmd/keepwatch dev

build: ## build the keepwatch binary (static, as the Docker image does)
	CGO_ENABLED=0 $(GO) build -trimpath -o keepwatch ./cmd/keepwatch

test: ## run every test (needs redis-server on PATH; .ci/run installs it)
	$(GO) test -timeout 60m ./...

ci: ## what CI runs: install redis-server when missing, then the tests
	bash .ci/run

lint: ## gofmt, go vet and staticcheck
	@out="$$(gofmt -l .)"; if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@if [ -x "$(STATICCHECK)" ]; then $(STATICCHECK) ./...; else echo "staticcheck not installed: go install honnef.co/go/tools/cmd/staticcheck@latest"; exit 1; fi

bench: ## Go benchmarks of every package (allocations included)
	$(GO) test -run '^$$' -bench . -benchmem ./...

bench-compare: ## keepwatch vs a bare Fiber server under the same load (see bench/README.md)
	$(GO) run ./bench/cmd/kwbench compare -duration 15s -connections 64
