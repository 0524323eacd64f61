// Package bench measures what gridmesh costs per call against plain gRPC,
// static TLS 1.3 and a haproxy sidecar pair, for gRPC and for HTTP (the h-*
// scenarios: mesh.NewHTTPServer and mesh.HTTPClient against net/http with
// static TLS 1.3 and the sidecar pair, a POST echoing its payload over
// HTTP/2), and holds the per-RPC allocation benchmarks of the mesh's call
// path and interceptors (BenchmarkDefaultPolicyAdds: what the default
// resilience policy adds to a successful mesh call).
//
// `make bench` runs the end-to-end harness (bench/cmd/harness): servers,
// proxies and load generators as separate processes, the scenarios
// interleaved over several rounds, CPU summed over every process on the
// path. By hand:
//
//	go build -o bin/ ./cmd/meshd ./bench/cmd/harness ./bench/cmd/benchserver ./bench/cmd/benchload
//	go test -c -o bin/bench.test ./bench
//	bin/harness -bin bin -out bin/bench-result.json   # full run, about 12 minutes
//	bin/harness -bin bin -quick                       # about one minute
//
// The in-process benchmarks run on their own:
//
//	go test -run '^$' -bench . -benchmem ./bench
//
// RESULTS.md has the table of one full run and where the cost goes.
package bench
