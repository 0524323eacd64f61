# gridmesh: `make demo` runs the REC trading platform, `make test` runs every test.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
# SPIRE=1 runs the demo on a real SPIRE server and agent (built from the Go
# module proxy by tools/spire/build.sh) instead of meshd dev's identities.
SPIRE ?=
SPIRE_DIR ?= /tmp/gridmesh-spire
# CONSUL=1 runs the demo on a real Consul agent (v1.14.11, built once by
# tools/consul/build.sh and cached) as catalog, Connect CA and intention store.
CONSUL ?=
# The demo takes routes, mTLS and RBAC from meshd's xDS; RECDEMOFLAGS= runs
# it on static targets with authorization in code. See bin/recdemo -h.
RECDEMOFLAGS ?= -xds

.PHONY: build demo demo-hello test proto vet bench

build:
	$(GO) build -o $(BIN)/ ./cmd/meshd ./cmd/meshctl ./examples/hello/greeter ./examples/hello/caller ./examples/rec/cmd/...

ifneq ($(CONSUL),)
demo: build
	consul_dir="$$(bash tools/consul/build.sh)" && \
		$(BIN)/recdemo -bin $(BIN) -consul "$$consul_dir/consul" $(filter-out -xds,$(RECDEMOFLAGS))
else ifeq ($(SPIRE),)
demo: build
	$(BIN)/recdemo -bin $(BIN) $(RECDEMOFLAGS)
else
demo: build
	bash tools/spire/up.sh -d $(SPIRE_DIR) -l 60 /registry=$(BIN)/registry /accounts=$(BIN)/accounts \
		/trading=$(BIN)/trading /settlement=$(BIN)/settlement /gateway=$(BIN)/gateway /meshd=$(BIN)/meshd /operator /portal
	trap 'bash tools/spire/down.sh -d $(SPIRE_DIR)' EXIT; \
		$(BIN)/recdemo -bin $(BIN) -spiffe-socket unix://$(SPIRE_DIR)/agent.sock $(RECDEMOFLAGS)
endif

demo-hello: build
	BIN=$(BIN) ./examples/hello/demo.sh

vet:
	$(GO) vet ./...

test: vet
	bash tools/spire/build.sh >/dev/null
	bash tools/consul/build.sh >/dev/null
	bash tools/etcd/build.sh >/dev/null
	bash tools/kube-apiserver/build.sh >/dev/null
	bash telemetry/internal/jaeger/build.sh >/dev/null
	$(GO) test -race -count=1 -timeout 60m ./...
	$(GO) test -run '^$$' -fuzz FuzzNormalizePathDenyRule -fuzztime 30s ./security/

# Benchmarks: the mesh against plain gRPC, static TLS 1.3 and a haproxy
# sidecar pair, as separate processes. About 12 minutes;
# `make bench BENCHFLAGS=-quick` about one. Writes bin/bench-result.json and .md.
BENCHFLAGS ?=
bench:
	command -v haproxy >/dev/null || (apt-get update && apt-get install -y haproxy)
	$(GO) build -o $(BIN)/ ./cmd/meshd ./bench/cmd/harness ./bench/cmd/benchserver ./bench/cmd/benchload
	$(GO) test -c -o $(BIN)/bench.test ./bench
	$(BIN)/harness -bin $(BIN) -out $(BIN)/bench-result.json $(BENCHFLAGS)

# Regenerate the committed protobuf code (protoc from Debian, plugins from
# the Go module proxy).
proto:
	command -v protoc >/dev/null || (apt-get update && apt-get install -y protobuf-compiler)
	GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	GOBIN=$(BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
	PATH=$(BIN):$$PATH protoc --go_out=. --go_opt=module=github.com/gridmesh/gridmesh \
		--go-grpc_out=. --go-grpc_opt=module=github.com/gridmesh/gridmesh \
		examples/hello/hellopb/hello.proto examples/rec/recpb/rec.proto
