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

# shellcheck source=tools/cachedbuild.sh
. "${here}/../cachedbuild.sh"

build() {
	local tmp="$1"
	echo "tools/etcd/build.sh: building etcd ${version} into ${dir} (about a minute the first time)" >&2
	cd "${here}"
	# -s -w drop the symbol table and DWARF: 25 MB.
	GOWORK=off go build -trimpath -ldflags='-s -w' -o "${tmp}/etcd" go.etcd.io/etcd/server/v3
	cd - >/dev/null
}

cached_build tools/etcd/build.sh etcd "${version}" "${dir}" build etcd
