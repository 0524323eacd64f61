#!/usr/bin/env bash
# Builds etcd (the version pinned by this module's go.mod tool directive) into a
# cache outside the repository, so later runs and fresh CI clones on the same
# machine reuse it. The Kubernetes tests (internal/testutil/kube) run it as
# the API server's store, next to tools/kube-apiserver/build.sh's binary.
#
#   bash tools/etcd/build.sh          # build if needed, print the binary dir
#
# Cache dir: $GRIDMESH_ETCD_DIR, or ${XDG_CACHE_HOME:-$HOME/.cache}/gridmesh/etcd-<version>.
# internal/testutil/kube looks in the same place.
#
# etcd v3.7.3 is Apache-2.0. About a minute the first time.
#
# A no-op when the binary exists and the stamp file matches this module's
# go.mod and go.sum. Safe when two runs race: a lock serializes them (where
# flock exists), and the binary is built under a temporary name and renamed
# into place, stamp last, so a reader never sees a half-written binary.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="v3.7.3"
if ! grep -q "go.etcd.io/etcd/server/v3 ${version}" "${here}/go.mod"; then
	echo "tools/etcd/build.sh: go.mod does not pin go.etcd.io/etcd/server/v3 ${version}; update the version in this script" >&2
	exit 1
fi

dir="${GRIDMESH_ETCD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gridmesh/etcd-${version}}"
mkdir -p "${dir}"

# The stamp names the version and the exact module graph the binary came from.
want="etcd ${version} $(cat "${here}/go.mod" "${here}/go.sum" | sha256sum | cut -d' ' -f1)"

up_to_date() {
	[[ -x "${dir}/etcd" && -f "${dir}/stamp" ]] &&
		[[ "$(cat "${dir}/stamp")" == "${want}" ]]
}

if up_to_date; then
	echo "${dir}"
	exit 0
fi

# Serialize concurrent builds: the second waits, then finds the stamp.
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

echo "tools/etcd/build.sh: building etcd ${version} into ${dir} (about a minute the first time)" >&2
start=$(date +%s)
(
	cd "${here}"
	# -s -w drop the symbol table and DWARF: 25 MB.
	GOWORK=off go build -trimpath -ldflags='-s -w' -o "${tmp}/etcd" go.etcd.io/etcd/server/v3
)

# Rename within one filesystem is atomic; the stamp goes last.
mv -f "${tmp}/etcd" "${dir}/etcd"
printf '%s\n' "${want}" >"${tmp}/stamp"
mv -f "${tmp}/stamp" "${dir}/stamp"
echo "tools/etcd/build.sh: built in $(($(date +%s) - start))s" >&2
echo "${dir}"
