# gridmesh: `make demo` runs the example, `make test` runs every test.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin

.PHONY: build demo test test-short proto vet

build:
	$(GO) build -o $(BIN)/ ./cmd/meshd ./examples/hello/greeter ./examples/hello/caller

demo: build
	BIN=$(BIN) ./examples/hello/demo.sh

vet:
	$(GO) vet ./...

test: vet
	bash tools/spire/build.sh >/dev/null
	bash telemetry/internal/jaeger/build.sh >/dev/null
	$(GO) test -race -count=1 -timeout 60m ./...
	$(GO) test -run '^$$' -fuzz FuzzNormalizePathDenyRule -fuzztime 30s ./security/

# Regenerate the committed protobuf code (protoc from Debian, plugins from
# the Go module proxy).
proto:
	command -v protoc >/dev/null || (apt-get update && apt-get install -y protobuf-compiler)
	GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	GOBIN=$(BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
	PATH=$(BIN):$$PATH protoc --go_out=. --go_opt=module=github.com/gridmesh/gridmesh \
		--go-grpc_out=. --go-grpc_opt=module=github.com/gridmesh/gridmesh \
		examples/hello/hellopb/hello.proto
