#!/usr/bin/env bash
# Builds Jaeger (all-in-one, v2) as pinned by tool/go.mod into a cache outside
# the repository, so later runs reuse it; the Jaeger trace test looks there.
#
#   bash telemetry/internal/jaeger/build.sh    # build if needed, print the binary dir
#
# Cache dir: $GRIDMESH_JAEGER_DIR, or ${XDG_CACHE_HOME:-$HOME/.cache}/gridmesh/jaeger-<version>.
# A no-op when the binary exists and its stamp matches tool/go.mod and go.sum.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="v1.76.0"
if ! grep -q "github.com/jaegertracing/jaeger ${version}" "${here}/tool/go.mod"; then
	echo "build.sh: tool/go.mod does not pin github.com/jaegertracing/jaeger ${version}; update the version here and in jaeger.go" >&2
	exit 1
fi
dir="${GRIDMESH_JAEGER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gridmesh/jaeger-${version}}"
mkdir -p "${dir}"
want="jaeger ${version} $(cat "${here}/tool/go.mod" "${here}/tool/go.sum" | sha256sum | cut -d' ' -f1)"
up_to_date() { [[ -x "${dir}/jaeger" && -f "${dir}/stamp" && "$(cat "${dir}/stamp")" == "${want}" ]]; }
if up_to_date; then
	echo "${dir}"
	exit 0
fi
if command -v flock >/dev/null 2>&1; then
	exec 9>"${dir}/.lock"
	flock 9
	if up_to_date; then
		echo "${dir}"
		exit 0
	fi
fi
tmp="$(mktemp -d "${dir}/.build.XXXXXX")"
trap 'rm -rf "${tmp}"' EXIT
echo "build.sh: building jaeger ${version} into ${dir} (10 to 20 minutes the first time)" >&2
start=$(date +%s)
(cd "${here}/tool" && CGO_ENABLED=0 nice -n 10 go build -trimpath -o "${tmp}/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger)
mv -f "${tmp}/jaeger" "${dir}/jaeger"
printf '%s\n' "${want}" >"${tmp}/stamp"
mv -f "${tmp}/stamp" "${dir}/stamp"
echo "build.sh: built in $(($(date +%s) - start))s" >&2
echo "${dir}"
