#!/usr/bin/env bash
# Builds the consul binary (the version pinned by this module's go.mod) into a
# cache outside the repository, so later runs and fresh CI clones on the same
# machine reuse it.
#
#   bash tools/consul/build.sh          # build if needed, print the binary dir
#
# Cache dir: $GRIDMESH_CONSUL_DIR, or ${XDG_CACHE_HOME:-$HOME/.cache}/gridmesh/consul-<version>.
# internal/testutil/consul looks in the same place (GRIDMESH_CONSUL_BIN there
# names a binary directly).
#
# Consul v1.14.11 is MPL-2.0 (see go.mod). `go install ...@v1.14.11` refuses
# Consul's go.mod (it has replace directives), hence this wrapper module; its
# go.sum was seeded from Consul's own.
#
# A no-op when the binary exists and the stamp file matches this module's
# go.mod and go.sum. Safe when two runs race: a lock serializes them (where
# flock exists), and the binary is built under a temporary name and renamed
# into place, stamp last, so a reader never sees a half-written binary.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="v1.14.11"
if ! grep -q "github.com/hashicorp/consul ${version}" "${here}/go.mod"; then
	echo "tools/consul/build.sh: go.mod does not pin github.com/hashicorp/consul ${version}; update the version in this script" >&2
	exit 1
fi

dir="${GRIDMESH_CONSUL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gridmesh/consul-${version}}"
mkdir -p "${dir}"

# shellcheck source=tools/cachedbuild.sh
. "${here}/../cachedbuild.sh"

build() {
	local tmp="$1"
	# Build from a copy of the module, so -mod=mod can never rewrite the
	# repository's go.mod or go.sum (they are complete; the copy stays as is too).
	mkdir "${tmp}/mod"
	cp "${here}/go.mod" "${here}/go.sum" "${tmp}/mod/"
	echo "tools/consul/build.sh: building consul ${version} into ${dir} (about 7 minutes the first time)" >&2
	cd "${tmp}/mod"
	# -s -w drop the symbol table and DWARF: 113 MB instead of 160 MB.
	GOFLAGS='-mod=mod -buildvcs=false' GOWORK=off go build -trimpath -ldflags='-s -w' -o "${tmp}/consul" github.com/hashicorp/consul
	cd - >/dev/null
}

cached_build tools/consul/build.sh consul "${version}" "${dir}" build consul
