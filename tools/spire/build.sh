#!/usr/bin/env bash
# Builds spire-server and spire-agent (the versions pinned by this module's
# go.mod tool directives) into a cache outside the repository, so later runs and
# fresh CI clones on the same machine reuse them.
#
#   bash tools/spire/build.sh          # build if needed, print the binary dir
#
# Cache dir: $GRIDMESH_SPIRE_DIR, or ${XDG_CACHE_HOME:-$HOME/.cache}/gridmesh/spire-<version>.
# internal/testutil/spire looks in the same place.
#
# A no-op when the binaries exist and the stamp file matches this module's
# go.mod and go.sum. Safe when two runs race: a lock serializes them (where
# flock exists), and the binaries are built under temporary names and renamed
# into place, stamp last, so a reader never sees a half-written binary.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="v1.13.3"
if ! grep -q "github.com/spiffe/spire ${version}" "${here}/go.mod"; then
	echo "tools/spire/build.sh: go.mod does not pin github.com/spiffe/spire ${version}; update the version in this script" >&2
	exit 1
fi

dir="${GRIDMESH_SPIRE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gridmesh/spire-${version}}"
mkdir -p "${dir}"

# shellcheck source=tools/cachedbuild.sh
. "${here}/../cachedbuild.sh"

build() {
	local tmp="$1"
	if ! command -v "$(go env CC)" >/dev/null 2>&1; then
		echo "tools/spire/build.sh: no C compiler ($(go env CC)): SPIRE's SQLite datastore needs cgo; apt-get install -y gcc" >&2
		exit 1
	fi
	echo "tools/spire/build.sh: building spire-server and spire-agent ${version} into ${dir} (8 to 15 minutes the first time)" >&2
	cd "${here}"
	# One go build for both: they share most packages. cgo stays on: the
	# SQLite datastore needs it.
	go build -trimpath -o "${tmp}/" \
		github.com/spiffe/spire/cmd/spire-server \
		github.com/spiffe/spire/cmd/spire-agent
	cd - >/dev/null
}

cached_build tools/spire/build.sh spire "${version}" "${dir}" build spire-server spire-agent
