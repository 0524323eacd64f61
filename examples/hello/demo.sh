#!/usr/bin/env bash
# Runs the hello example as three processes: `meshd dev` serving identities
# over the SPIFFE Workload API, the greeter, and the caller.
set -euo pipefail
bin=${BIN:-bin}
dir=$(mktemp -d /tmp/gridmesh-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

wait_for() { # file, what
  for _ in $(seq 1 100); do [ -e "$1" ] && return 0; sleep 0.1; done
  echo "demo: $2 did not start" >&2; exit 1
}

"$bin/meshd" dev -socket-dir "$dir" -identities greeter,caller -svid-ttl 10m -xds "" -ready-file "$dir/ready" &
pids+=($!)
wait_for "$dir/ready" "meshd dev"

SPIFFE_ENDPOINT_SOCKET="unix://$dir/greeter.sock" "$bin/greeter" -listen 127.0.0.1:0 > "$dir/greeter.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q serving "$dir/greeter.log" 2>/dev/null && break; sleep 0.1; done
cat "$dir/greeter.log"
addr=$(sed -n 's/^greeter: serving as .* on //p' "$dir/greeter.log")
[ -n "$addr" ] || { echo "demo: greeter did not start" >&2; exit 1; }

SPIFFE_ENDPOINT_SOCKET="unix://$dir/caller.sock" "$bin/caller" -target "$addr"
sleep 0.2
tail -n +2 "$dir/greeter.log"
echo "demo: done"
