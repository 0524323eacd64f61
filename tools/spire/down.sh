#!/usr/bin/env bash
# Stops the SPIRE agent and server that tools/spire/up.sh started.
#
#   bash tools/spire/down.sh [-d DIR]     # DIR defaults to /tmp/gridmesh-spire
set -euo pipefail

dir=/tmp/gridmesh-spire
while getopts "d:" opt; do
	case "${opt}" in
	d) dir="${OPTARG}" ;;
	*) echo "usage: down.sh [-d DIR]" >&2; exit 2 ;;
	esac
done

for name in agent server; do
	pidfile="${dir}/${name}.pid"
	[[ -f "${pidfile}" ]] || continue
	pid="$(cat "${pidfile}")"
	if kill -0 "${pid}" 2>/dev/null; then
		kill "${pid}"
		for _ in $(seq 1 50); do
			kill -0 "${pid}" 2>/dev/null || break
			sleep 0.2
		done
		kill -0 "${pid}" 2>/dev/null && kill -9 "${pid}"
	fi
	rm -f "${pidfile}"
	echo "down.sh: stopped spire-${name}" >&2
done
