// Package bench measures what gridmesh costs per call against plain gRPC,
// static TLS 1.3 and a haproxy sidecar pair, and holds the per-RPC
// allocation benchmarks for the mesh's own interceptors.
//
// The end-to-end harness runs servers, proxies and load generators as
// separate processes and interleaves the scenarios over several rounds:
//
//	go build -o bin/ ./cmd/meshd ./bench/cmd/harness ./bench/cmd/benchserver ./bench/cmd/benchload
//	go test -c -o bin/bench.test ./bench
//	bin/harness -bin bin -out bench-result.json        # full run, ~15 minutes
//	bin/harness -bin bin -quick                        # ~1 minute
//
// The in-process benchmarks run on their own:
//
//	go test -run '^$' -bench . -benchmem ./bench
//
// Nothing here is imported by the mesh; the package holds only tests.
package bench
